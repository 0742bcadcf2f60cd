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
from reward_server.rewards.rules import prepare_ground_truth, rule_accuracy
from reward_server.rewards.tasks import TaskType

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
        ("no... actually yes", "no"),
        ("(yes)", "yes"),
        ("yes/no", "yes"),
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
    assert rule_accuracy(TaskType.MCQ, response, prepare_ground_truth(TaskType.MCQ, truth)) == expected
