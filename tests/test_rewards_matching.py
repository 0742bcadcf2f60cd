"""Matching reward (SPEC §3): yes/no words and multiple-choice letters."""

import pytest

from reward_server.rewards.matching import (
    McqTruth,
    extract_option_letter,
    extract_yes_no,
    mcq_reward,
    split_leading_option,
    yes_no_reward,
)
from reward_server.rewards.options import ResolvedOptions
from reward_server.rewards.rules import prepare_ground_truth, score_answer

# ------------------------------------------------------------------------------------------ yes/no


@pytest.mark.parametrize(
    ("text", "word"),
    [
        ("yes", "yes"),
        ("Yes!", "yes"),
        ("NO.", "no"),
        ("No, it is not.", "no"),
        ("I know it is yes", "yes"),
        ("nothing here, yesterday, know, nobody, yess", None),
        ("not sure", None),
        ("", None),
        ("The answer:\n\nYES", "yes"),
        ("(yes)", "yes"),
        ("ＹＥＳ", "yes"),  # full-width letters fold under NFKC
        ("是的 yes", "yes"),
    ],
)
def test_extract_yes_no(text: str, word: str | None) -> None:
    assert extract_yes_no(text) == word


@pytest.mark.parametrize(
    ("span", "truth", "expected"),
    [
        ("Yes!", "yes", 1.0),
        ("yes", "no", 0.0),
        ("I know", "no", 0.0),
        ("nothing", "no", 0.0),
        ("yesterday", "yes", 0.0),
        ("NO.", "no", 1.0),
        ("", "yes", 0.0),
    ],
)
def test_yes_no_reward(span: str, truth: str, expected: float) -> None:
    assert yes_no_reward(span, truth) == expected


@pytest.mark.parametrize(
    "span",
    [
        "yes and no",
        "yes/no",
        "Yes or no",
        "no... actually yes",
        "maybe yes, maybe no",
        "Yes. No.",
        "Yes, no.",
        "yes, no, yes",
        "the answer is yes or no",  # a marker with both words listed decides nothing
        "The answer is yes. The answer is no.",
        "so yes or no",
    ],
)
def test_both_yes_and_no_is_a_hedge(span: str) -> None:
    """SPEC §3: a span naming both words without a decisive marker earns nothing, whatever the truth."""
    assert extract_yes_no(span) is None
    assert yes_no_reward(span, "yes") == 0.0
    assert yes_no_reward(span, "no") == 0.0


@pytest.mark.parametrize("span", ["not yes", "not no", "Not yes.", "it is not a yes"])
def test_negated_answer_word_is_no_answer(span: str) -> None:
    """``not yes`` is not "no" either: it answers nothing."""
    assert extract_yes_no(span) is None
    assert yes_no_reward(span, "yes") == yes_no_reward(span, "no") == 0.0


@pytest.mark.parametrize(
    ("span", "word"),
    [
        ("yes... the answer is no", "no"),
        ("Yes and no are both possible; answer: no", "no"),
        ("I thought no at first, so yes.", "yes"),
        ("Hmm, yes or no? Therefore, no", "no"),
        ("Yes, there is no dog in the picture.", "yes"),  # "no dog": a determiner, not an answer
        ("Yes, it is.", "yes"),
        ("No, it is not yes.", "no"),  # the negated "yes" is dropped
        ("The answer: yes", "yes"),
    ],
)
def test_decisive_markers_settle_both_words(span: str, word: str) -> None:
    assert extract_yes_no(span) == word
    assert yes_no_reward(span, word) == 1.0


# --------------------------------------------------------------------------------------------- MCQ


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("A", "A"),
        ("a", "A"),
        ("(A)", "A"),
        ("[A]", "A"),
        ("A.", "A"),
        ("A)", "A"),
        ("A: text", "A"),
        ("A. 3 cm", "A"),
        ("(A) 3 cm", "A"),
        ("b) a triangle", "B"),
        ("Option A", "A"),
        ("option (d)", "D"),
        ("The answer is (C).", "C"),
        ("The answer is C because the angle is right", "C"),
        ("Answer: b", "B"),
        ("answer: (b) 5 cm", "B"),
        ("The correct answer is D. Option A is wrong.", "D"),
        ("Comparing (A) and (B), the answer is (B).", "B"),
        ("the best choice is c", "C"),
        ("I think it's B", "B"),
        ("I think A is right", "A"),
        ("A cat, so the answer must be B", "B"),
        ("X-ray images suggest C", "C"),
        ("I'm sure it is D", "D"),
        ("In the U.S. the answer would be E", "E"),
        ("It is (c), clearly", "C"),
        ("  \n C \n ", "C"),
        ("Ｂ", "B"),  # full-width
        ("nothing to see here", None),
        ("the answer is a cat", None),
        ("", None),
        ("I", "I"),
    ],
)
def test_extract_option_letter(text: str, letter: str | None) -> None:
    assert extract_option_letter(text) == letter


@pytest.mark.parametrize(
    "span",
    [
        "A B C D",
        "A, B",
        "A/B",
        "A/B/C/D",
        "A or B",
        "A, or B",
        "A and B",
        "A or maybe B",
        "(A)(B)",
        "(A) (B)",
        "[A][B]",
        "A. B. C. D.",
        "A) or B",
        "A: B",
        "A, B, C",
        "Either A or B",
        "It could be A or B",
        "Maybe A, maybe B",
        "Option A or option B",
        "A. 3 cm B. 4 cm C. 5 cm D. 6 cm",  # the whole option list copied
        "(A) 3 cm (B) 4 cm",
        "The answer is A or B",
        "answer: A/B",
        "answer: a, b",
        "The answer is A. Wait, the answer is B.",
    ],
)
def test_several_options_without_a_decisive_marker_score_zero(span: str) -> None:
    """SPEC §3: listing options is a hedge; it must not be paid as its first candidate."""
    assert extract_option_letter(span) is None
    for truth in ("A", "B", "(A) 3 cm"):
        assert mcq_reward(span, McqTruth.parse(truth)) == 0.0


@pytest.mark.parametrize(
    ("span", "letter"),
    [
        ("The answer is (C).", "C"),
        ("Comparing (A) and (B), the answer is (B).", "B"),  # the marker decides
        ("The answer is (C), not (A).", "C"),
        ("The answer is C, I think", "C"),
        ("(A) 3 cm", "A"),
        ("C. Because angle B is 30 degrees", "C"),  # a leading option, explanation mentions B
        ("(C) since AB = BC", "C"),
        ("A, because B is wrong", "A"),
        ("C, I think.", "C"),
    ],
)
def test_decisive_markers_pick_one_option(span: str, letter: str) -> None:
    assert extract_option_letter(span) == letter
    assert mcq_reward(span, McqTruth.parse(letter)) == 1.0


def test_listing_detection_is_linear() -> None:
    import time

    for text in ("A " * 50_000, "(A)" * 30_000, "A, " * 40_000, "answer is A " * 10_000, "A. " + "x " * 50_000):
        started = time.perf_counter()
        extract_option_letter(text)
        assert time.perf_counter() - started < 1.0, text[:20]


def test_split_leading_option() -> None:
    assert split_leading_option("(A) 3 cm") == ("A", "3 cm")
    assert split_leading_option("c: the blue one") == ("C", "the blue one")
    assert split_leading_option("A cat") is None
    assert split_leading_option("e.g. a dog") is None


@pytest.mark.parametrize(
    ("truth", "letter", "option_text"),
    [
        ("A", "A", ""),
        ("(b)", "B", ""),
        ("C.", "C", ""),
        ("A. 3 cm", "A", "3 cm"),
        ("(D) The Blue Whale.", "D", "the blue whale"),
        ("3 cm", None, "3 cm"),
        ("Vitamin C", None, "vitamin c"),
        ("Answer: B", "B", ""),
    ],
)
def test_mcq_truth_parse(truth: str, letter: str | None, option_text: str) -> None:
    parsed = McqTruth.parse(truth)
    assert parsed.letter == letter
    assert parsed.option_text == option_text


@pytest.mark.parametrize(
    ("span", "truth", "expected"),
    [
        ("A", "A", 1.0),
        ("a", "A", 1.0),
        ("(A) 3 cm", "A", 1.0),
        ("B", "A", 0.0),
        ("The answer is (C).", "C", 1.0),
        ("The answer is (C).", "(C) 12 apples", 1.0),
        ("Option A", "A. 3 cm", 1.0),
        ("3 cm", "A. 3 cm", 1.0),  # option text alone against letter + text
        ("3 CM.", "A. 3 cm", 1.0),
        ("B. 3 cm", "A. 3 cm", 0.0),  # the chosen letter wins over copied text
        ("4 cm", "A. 3 cm", 0.0),
        ("(B) 3 cm", "3 cm", 1.0),  # truth is option text alone
        ("  the Blue   whale ", "The blue whale.", 1.0),
        ("B", "3 cm", 0.0),  # a letter cannot be checked against text alone
        ("Vitamin C", "B. Vitamin C", 1.0),  # exact option text beats the lone capital
        ("I think it's B", "B", 1.0),
        ("I think it's B", "I", 0.0),
        ("", "A", 0.0),
        ("...", "A", 0.0),
    ],
)
def test_mcq_reward(span: str, truth: str, expected: float) -> None:
    assert mcq_reward(span, McqTruth.parse(truth)) == expected


@pytest.mark.parametrize(
    ("truth", "response", "expected"),
    [
        ("Option B", "B", 1.0),  # SPEC §3 lists "Option A" as a letter form: for truths too
        ("Choice (C)", "The answer is (C).", 1.0),
        ("option b", "(B)", 1.0),
        ("Option B", "A", 0.0),
        ("the choice a patient makes", "A", 0.0),  # a marker inside prose is not a letter truth
        ("the choice a patient makes", "The choice a patient makes.", 1.0),
    ],
)
def test_option_marked_truths(truth: str, response: str, expected: float) -> None:
    assert score_answer(response, prepare_ground_truth("mcq", truth), ResolvedOptions()).accuracy == expected
