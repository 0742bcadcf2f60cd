"""Counting (SPEC §13d): exactly one count, in digits or a number word, equal to the truth."""

from __future__ import annotations

import httpx
import pytest

from reward_server.rewards.errors import InvalidGroundTruth
from reward_server.rewards.families.counting import Counting, numbers_named, read_count
from reward_server.rewards.options import ResolvedOptions

FAMILY = Counting()


def score(span: str, truth: str) -> float:
    return FAMILY.score(span, FAMILY.parse_truth(truth), ResolvedOptions()).accuracy


@pytest.mark.parametrize(
    ("span", "count"),
    [
        ("3", 3),
        ("3.0", 3),
        ("3 apples", 3),
        ("three dogs", 3),
        ("Three", 3),
        ("There are 3 dogs in the image.", 3),
        ("There are twenty birds.", 20),
        ("zero", 0),
        ("0", 0),
        ("12", 12),
        ("1,200 people", 1200),
        ("3 (three)", 3),  # the same number twice is one answer
        ("3.", 3),  # a full stop is not a decimal point
        ("  7\n", 7),
    ],
)
def test_one_count(span: str, count: int) -> None:
    assert read_count(span) == count


@pytest.mark.parametrize(
    "span",
    [
        "3 or 4",  # hedge
        "either two or three",
        "3-4",  # a range names two numbers
        "0 1 2 3",  # a list
        "1,2,3",
        "two or 3",
        "twenty-one",  # 20 and 1: beyond twenty, digits
        "3.5",  # not an integer
        "-3",  # negative
        "",
        "many",
        "a dog",  # no number word
        "I count 3 dogs and 2 cats",  # several different numbers
        "3rd",  # an ordinal is no count
        "someone",  # "one" inside a word is not a number word
    ],
)
def test_no_count_or_a_hedge(span: str) -> None:
    assert read_count(span) is None


def test_numbers_named_keeps_order_and_values() -> None:
    assert numbers_named("3 cats, five dogs and 1,000 ants") == [3.0, 5.0, 1000.0]
    assert numbers_named("COVID-19 in 2-3 weeks") == [19.0, 2.0, 3.0]


@pytest.mark.parametrize(
    ("span", "truth", "expected"),
    [
        ("3", "3", 1.0),
        ("three", "3", 1.0),
        ("3", "three", 1.0),
        ("There are 4 dogs.", "3", 0.0),
        ("3 or 4", "3", 0.0),
        ("0 1 2 3", "3", 0.0),
        ("3.0 apples", "3.0", 1.0),
        ("nothing", "0", 0.0),
    ],
)
def test_score(span: str, truth: str, expected: float) -> None:
    assert score(span, truth) == expected


@pytest.mark.parametrize("truth", ["-1", "2.5", "many", "", "3 or 4", "1, 2"])
def test_malformed_truths(truth: str) -> None:
    with pytest.raises(InvalidGroundTruth):
        FAMILY.parse_truth(truth)


def test_explain_gives_the_count() -> None:
    assert FAMILY.score("five cats", 5, ResolvedOptions(explain=True)).parsed == 5
    assert FAMILY.score("5 or 6", 5, ResolvedOptions(explain=True)).parsed is None


def test_through_the_server(server) -> None:
    items = [
        {"response": "<think>t</think><answer>There are seven cars.</answer>", "ground_truth": 7, "task_type": "count"},
        {"response": "<think>t</think><answer>7 or 8</answer>", "ground_truth": "7", "task_type": "counting"},
    ]
    r = httpx.post(server.url + "/score", json={"items": items}, timeout=60)
    assert r.status_code == 200, r.text
    assert [(x["task_type"], x["accuracy"], x["reward"]) for x in r.json()["results"]] == [
        ("counting", 1.0, 2.0), ("counting", 0.0, 1.0)
    ]


def test_bad_truth_is_a_422_naming_the_item(server) -> None:
    items = [{"response": "<answer>3</answer>", "ground_truth": -2, "task_type": "counting"}]
    r = httpx.post(server.url + "/score", json={"items": items}, timeout=60)
    assert r.status_code == 422, r.text
    (detail,) = r.json()["error"]["details"]
    assert (detail["item"], detail["field"]) == (0, "ground_truth")
    assert "non-negative integer" in detail["message"]
