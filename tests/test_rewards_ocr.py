"""OCR / document answers (SPEC §13c): ANLS against one or several acceptable answers."""

from __future__ import annotations

import httpx
import pytest

from reward_server.rewards.errors import InvalidGroundTruth
from reward_server.rewards.families.ocr import Ocr, anls, normalise, parse_answers
from reward_server.rewards.options import ResolvedOptions

FAMILY = Ocr()
OPTIONS = ResolvedOptions()


def score(span: str, truth: str) -> float:
    return FAMILY.score(span, FAMILY.parse_truth(truth), OPTIONS).accuracy


@pytest.mark.parametrize(
    ("span", "truth", "expected"),
    [
        ("Paris", "Paris", 1.0),
        ("PARIS", "paris", 1.0),  # lower-cased
        ("  new   york\n", "New York", 1.0),  # whitespace collapsed and stripped
        ("Pari", "Paris", 1 - 1 / 5),  # one deletion over max length 5
        ("Parjs", "Paris", 1 - 1 / 5),  # one substitution
        ("Paris!", "Paris", 1 - 1 / 6),  # punctuation is part of what was read
        ("abcd", "abcdefgh", 0.0),  # NL = 4/8 = 0.5: not below 0.5, so 0
        ("abcde", "abcdefgh", 1 - 3 / 8),  # NL = 3/8
        ("xyz", "Paris", 0.0),
        ("", "Paris", 0.0),  # empty span
        ("   ", "Paris", 0.0),
        ("Paris or Lyon", "Paris", 0.0),  # a hedge lengthens the answer: NL = 8/13
        ("Paris.", '["Paris", "Paris, France"]', 1 - 1 / 6),
        ("paris france", '["Paris", "Paris, France"]', 1 - 1 / 13),  # the best of the answers
        ("12.50", '"12.50"', 1.0),  # a JSON string is unwrapped once
        ('"quoted"', '"quoted"', 1.0),  # ... and is also the text as written, quotes included
        ("2019", "2019", 1.0),
    ],
)
def test_anls(span: str, truth: str, expected: float) -> None:
    assert score(span, truth) == pytest.approx(expected)


def test_one_character_answers() -> None:
    # A one-character span against a long answer is far from it; against a one-character
    # answer it is right or wrong outright.
    assert score("a", "Paris") == 0.0
    assert score("B", "b") == 1.0
    assert score("C", "b") == 0.0


def test_normalise_is_the_docvqa_one() -> None:
    assert normalise("  Hello \t World\n ") == "hello world"
    assert anls("", ("x",)) == 0.0


@pytest.mark.parametrize(
    ("truth", "answers"),
    [
        ("Paris", ("paris",)),
        ('["Paris", "PARIS ", "paris, france"]', ("paris", "paris, france")),  # folded, de-duplicated
        ('"Paris"', ("paris", '"paris"')),  # JSON-encoded, or a sign that reads "Paris" with its quotes
        ("[Not a JSON list", ("[not a json list",)),
        ("42", ("42",)),  # a JSON number is read as written
    ],
)
def test_truth_forms(truth: str, answers: tuple[str, ...]) -> None:
    assert parse_answers(truth) == answers


@pytest.mark.parametrize(
    ("truth", "fragment"),
    [("[]", "empty list"), ('["Paris", 3]', "not a string"), ('["Paris", "  "]', "is empty"),
     ('[["Paris"]]', "not a string")],
)
def test_malformed_truths(truth: str, fragment: str) -> None:
    with pytest.raises(InvalidGroundTruth) as info:
        parse_answers(truth)
    assert fragment in info.value.message and info.value.field == "ground_truth"


def test_explain_shows_the_normalised_answer() -> None:
    result = FAMILY.score("  The  EIFFEL tower ", ("the eiffel tower",), ResolvedOptions(explain=True))
    assert (result.accuracy, result.parsed) == (1.0, "the eiffel tower")


def test_through_the_server(server) -> None:
    items = [
        {"response": "<think>t</think><answer>Pari</answer>", "ground_truth": ["Paris", "Lyon"], "task_type": "anls"},
        {"response": "<answer>Paris</answer>", "ground_truth": "Paris", "task_type": "DocVQA"},
    ]
    r = httpx.post(server.url + "/score", json={"items": items}, timeout=60)
    assert r.status_code == 200, r.text
    first, second = r.json()["results"]
    assert first["task_type"] == "ocr" and first["accuracy"] == pytest.approx(0.8)
    assert first["reward"] == pytest.approx(1.8)  # format 1
    assert (second["accuracy"], second["format"]) == (1.0, 0.0)


def test_bad_truth_is_a_422_naming_the_item(server) -> None:
    items = [{"response": "<answer>Paris</answer>", "ground_truth": "Paris", "task_type": "ocr"},
             {"response": "<answer>Paris</answer>", "ground_truth": ["Paris", 7], "task_type": "text_vqa", "id": "d1"}]
    r = httpx.post(server.url + "/score", json={"items": items}, timeout=60)
    assert r.status_code == 422, r.text
    (detail,) = r.json()["error"]["details"]
    assert (detail["item"], detail["id"], detail["field"]) == (1, "d1", "ground_truth")
    assert "not a string" in detail["message"] and "task_type ocr" in detail["message"]
