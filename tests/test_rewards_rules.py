"""The dispatcher: ground-truth preparation and validation, and scoring through one entry point."""

import dataclasses
import math
import random
import time

import pytest

from reward_server.rewards.errors import InvalidGroundTruth, ItemFieldError
from reward_server.rewards.rules import PreparedTruth, prepare_ground_truth, rule_accuracy
from reward_server.rewards.tasks import TaskType

RULE_TASKS = [TaskType.YES_NO, TaskType.MCQ, TaskType.CHART, TaskType.GROUNDING]


def score(task: TaskType, response: str, truth: str) -> float:
    return rule_accuracy(task, response, prepare_ground_truth(task, truth))


@pytest.mark.parametrize(
    ("task", "response", "truth", "expected"),
    [
        (TaskType.YES_NO, "<think>no no no</think><answer>Yes!</answer>", "yes", 1.0),
        (TaskType.YES_NO, "<think>yes</think><answer>I know</answer>", "no", 0.0),
        (TaskType.YES_NO, "<think>hmm, yes</think>No.", "<answer>No</answer>", 1.0),
        (TaskType.YES_NO, "<think>yes, truncated", "yes", 0.0),  # reasoning never earns
        (TaskType.MCQ, "<think>I think A</think><answer>(C) 12 apples</answer>", "C", 1.0),
        (TaskType.MCQ, "<answer>The answer is (B).</answer>", "<answer>B</answer>", 1.0),
        (TaskType.MCQ, "<answer>3 cm</answer>", "A. 3 cm", 1.0),
        (TaskType.MCQ, "<answer>I think it's B</answer>", "B", 1.0),
        (TaskType.CHART, "<answer>$1,234.50</answer>", "1234.5", 1.0),
        (TaskType.CHART, "<think>maybe 12</think><answer>The value is 12,000.</answer>", "12000", 1.0),
        (TaskType.CHART, "<answer>45%</answer>", "0.45", 1.0),
        (TaskType.CHART, "<answer>Paris.</answer>", "paris", 1.0),
        (TaskType.GROUNDING, "<answer>[0, 0, 10, 10]</answer>", "[0, 0, 10, 10]", 1.0),
        (TaskType.GROUNDING, "<answer>[5, 0, 15, 10]</answer>", "<answer>[0,0,10,10]</answer>", 1 / 3),
        (TaskType.GROUNDING, '<answer>[{"bbox_2d": [0,0,10,10]}]</answer>', '{"bbox": [0, 0, 10, 10]}', 1.0),
        (
            TaskType.GROUNDING,
            "<answer>[[0,0,10,10],[20,20,30,30],[40,40,50,50]]</answer>",
            "[[0,0,10,10],[20,20,30,30]]",
            2 / 3,
        ),
    ],
)
def test_end_to_end(task: TaskType, response: str, truth: str, expected: float) -> None:
    assert score(task, response, truth) == pytest.approx(expected)


def test_prepared_truth_is_frozen_hashable_and_exposes_text() -> None:
    truth = prepare_ground_truth(TaskType.GROUNDING, "<answer> [[1,2,3,4],[5,6,7,8]] </answer>")
    assert truth.task is TaskType.GROUNDING
    assert truth.text == "[[1,2,3,4],[5,6,7,8]]"
    assert hash(truth) == hash(prepare_ground_truth(TaskType.GROUNDING, "[[1,2,3,4],[5,6,7,8]]"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        truth.text = "x"  # type: ignore[misc]
    for task, text in [(TaskType.YES_NO, "yes"), (TaskType.MCQ, "A"), (TaskType.CHART, "12")]:
        hash(prepare_ground_truth(task, text))


def test_open_ended_truth_is_its_unwrapped_text() -> None:
    truth = prepare_ground_truth(TaskType.OPEN_ENDED, "<answer>\n A dog runs on the beach. \n</answer>")
    assert truth.task is TaskType.OPEN_ENDED
    assert truth.text == "A dog runs on the beach."
    with pytest.raises(ValueError):
        rule_accuracy(TaskType.OPEN_ENDED, "a dog", truth)


def test_truth_for_another_task_is_rejected() -> None:
    with pytest.raises(ValueError):
        rule_accuracy(TaskType.MCQ, "A", prepare_ground_truth(TaskType.YES_NO, "yes"))


def test_task_may_be_given_by_value() -> None:
    truth = prepare_ground_truth("yes_no", "yes")  # type: ignore[arg-type]
    assert rule_accuracy("yes_no", "yes", truth) == 1.0  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("task", "truth", "fragment"),
    [
        (TaskType.YES_NO, "", "empty"),
        (TaskType.YES_NO, "   \n", "empty"),
        (TaskType.YES_NO, "<answer>  </answer>", "empty"),
        (TaskType.MCQ, "", "empty"),
        (TaskType.MCQ, "<answer></answer>", "empty"),
        (TaskType.CHART, "", "empty"),
        (TaskType.GROUNDING, "", "empty"),
        (TaskType.OPEN_ENDED, "", "empty"),
        (TaskType.YES_NO, "maybe", "yes"),
        (TaskType.YES_NO, "I know nothing", "yes"),
        (TaskType.MCQ, "...", "letter"),
        (TaskType.GROUNDING, "the dog", "no box"),
        (TaskType.GROUNDING, "[1, 2, 3]", "4 numbers"),
        (TaskType.GROUNDING, "[1, 2, 1, 9]", "zero area"),
        (TaskType.GROUNDING, "[1, 2, NaN, 9]", "NaN"),
        (TaskType.GROUNDING, '"[1, 2, \\"x\\", 4]"', "non-numeric"),
    ],
)
def test_bad_ground_truths_raise(task: TaskType, truth: str, fragment: str) -> None:
    with pytest.raises(InvalidGroundTruth) as info:
        prepare_ground_truth(task, truth)
    assert isinstance(info.value, ItemFieldError)
    assert info.value.field == "ground_truth"
    assert fragment in info.value.message


def test_non_numeric_chart_truth_is_fine() -> None:
    truth = prepare_ground_truth(TaskType.CHART, "Q3 2019")
    assert rule_accuracy(TaskType.CHART, "q3 2019", truth) == 1.0


# ------------------------------------------------------------------- responses never raise, fast

NASTY_RESPONSES = [
    "",
    " ",
    "\x00\x01\x02",
    "nan",
    "NaN%",
    "inf",
    "-inf",
    "1e999",
    "-1e999%",
    "9" * 5000,
    "0." + "0" * 5000 + "1",
    "$" * 1000,
    "[[[[[[[[[[",
    "]]]]]]]",
    "[" * 5000 + "]" * 5000,
    "[1, 2, 3, 4" * 1000,
    '{"bbox_2d": [NaN, Infinity, -Infinity, 1e999]}',
    '{"bbox": "x"}',
    '[{"bbox_2d": {"a": [1, 2, 3, 4]}}]',
    "[[0,0],[1e308,0],[1e308,1e308],[0,1e308]]",
    "[[0,0],[2,2],[2,0],[0,2]]",
    "[1e308, 1e308, -1e308, -1e308]",
    "<answer>" * 100 + "</answer>",
    "<think>" + "yes " * 1000,
    "\ud800 lone surrogate yes A 12 [1,2,3,4]",
    "🙂 Ｂ ５０％ ［１，２，３，４］",
    "A" * 10_000,
    "I " * 10_000,
    "answer is " * 5_000,
    "(" * 10_000,
    '"\\"' * 10_000,
    "1," * 20_000,
    "-" * 20_000 + "5",
]


@pytest.mark.parametrize("response", NASTY_RESPONSES, ids=range(len(NASTY_RESPONSES)))
@pytest.mark.parametrize(
    ("task", "truth"),
    [
        (TaskType.YES_NO, "yes"),
        (TaskType.MCQ, "B. 50"),
        (TaskType.CHART, "50%"),
        (TaskType.CHART, "Paris"),
        (TaskType.GROUNDING, "[1, 2, 3, 4]"),
        (TaskType.GROUNDING, "[[1, 2, 3, 4], [[0,0],[5,0],[5,5],[0,5]]]"),
    ],
)
def test_nasty_responses_never_raise(task: TaskType, truth: str, response: str) -> None:
    value = score(task, response, truth)
    assert isinstance(value, float) and math.isfinite(value) and 0.0 <= value <= 1.0


def _repeat(unit: str, length: int) -> str:
    return unit * (length // len(unit) + 1)


# Shapes that make naive regexes backtrack or naive parsers recurse, as (unit, prefix).
ADVERSARIAL_UNITS = {
    "spaces": " ",
    "answer_words": "answer is a ",
    "open_brackets": "[",
    "close_brackets": "]",
    "open_parens": "(",
    "numbers": "1,",
    "thousands": "1,000",
    "long_digits": "9",
    "signs": "-$",
    "dots": "1.",
    "exponents": "1e",
    "percent": "5 %",
    "boxes": "[0,0,10,10],",
    "points": "[0,0],",
    "quotes": '"\\"',
    "tags": "<answer><think></think>",
    "think_open": "<think>",
    "capitals": "A ",
    "pronouns": "I ",
    "letters": "(a",
    "yes_words": "yesterday ",
    "unicode": "é😀中‱",
}
ADVERSARIAL_TRUTHS = [
    (TaskType.YES_NO, "yes"),
    (TaskType.MCQ, "A. 3 cm"),
    (TaskType.CHART, "12,000"),
    (TaskType.GROUNDING, "[0, 0, 10, 10]"),  # reads the first shape only
    (TaskType.GROUNDING, "[[0, 0, 10, 10], [20, 20, 30, 30]]"),  # parses every shape, then matches
]


def _assert_fast(text: str, limit_s: float) -> None:
    for task, truth_text in ADVERSARIAL_TRUTHS:
        truth = prepare_ground_truth(task, truth_text)
        started = time.thread_time()  # this thread's CPU: neither load nor the test server's thread counts
        value = rule_accuracy(task, text, truth)
        elapsed = time.thread_time() - started
        assert math.isfinite(value) and 0.0 <= value <= 1.0
        assert elapsed < limit_s, f"{text[:30]!r}... / {task.value}: {elapsed:.3f}s"


@pytest.mark.parametrize("name", sorted(ADVERSARIAL_UNITS))
def test_adversarial_50k_inputs_are_linear(name: str) -> None:
    """Every shape against every rule. Not a benchmark: a guard against catastrophic backtracking,
    which at 50k characters takes minutes; linear code takes well under 0.5 s, the bound is 10x that."""
    _assert_fast(_repeat(ADVERSARIAL_UNITS[name], 50_000), limit_s=5.0)


@pytest.mark.parametrize("name", ["boxes", "numbers", "pronouns"])
def test_adversarial_200k_inputs_finish_well_under_a_second(name: str) -> None:
    _assert_fast(_repeat(ADVERSARIAL_UNITS[name], 200_000), limit_s=10.0)


def test_answer_followed_by_200k_spaces() -> None:
    _assert_fast("answer" + " " * 200_000 + "!", limit_s=10.0)


def test_single_truth_box_against_a_200k_polygon_is_fast() -> None:
    truth = prepare_ground_truth(TaskType.GROUNDING, "[0, 0, 10, 10]")
    started = time.thread_time()
    value = rule_accuracy(TaskType.GROUNDING, "[" + "[0,0],[9,9],[9,0]," * 11_000 + "[0,9]]", truth)
    assert time.thread_time() - started < 10.0  # uncapped, this took 278 s
    assert value == 0.0  # 33k-vertex self-intersecting polygon: too tangled to repair, scores 0


def test_random_garbage_never_raises() -> None:
    rng = random.Random(7)
    alphabet = "0123456789.,-+eE%$€[](){}:\"' \nabcxyzAB<>/answerthink" + "yesno" + "ＡＢ１２"
    truths = [
        prepare_ground_truth(task, text)
        for task, text in [
            (TaskType.YES_NO, "no"),
            (TaskType.MCQ, "(A) 3 cm"),
            (TaskType.CHART, "-3.2e3"),
            (TaskType.GROUNDING, "[[1,2,3,4],[5,6,7,8]]"),
        ]
    ]
    for _ in range(300):
        response = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 200)))
        for truth in truths:
            value = rule_accuracy(truth.task, response, truth)
            assert math.isfinite(value) and 0.0 <= value <= 1.0


def test_prepared_truth_type_is_exported() -> None:
    assert PreparedTruth.__name__ == "PreparedTruth"
