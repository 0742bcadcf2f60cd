"""Format reward (SPEC §7) and the final combination (SPEC §8)."""

import math
import random
import re
import time

import pytest

from reward_server.errors import ItemFieldError
from reward_server.rewards.combine import final_reward
from reward_server.rewards.format import format_reward


@pytest.mark.parametrize(
    "response",
    [
        "<think>reasoning</think><answer>B</answer>",
        "<think>a</think> \n\t <answer>b</answer>",
        "  \n<think>multi\nline\nreasoning</think>\n<answer>\nmulti\nline\n</answer>\n  ",
        "<think></think><answer></answer>",
        "<think>uses <Answer> in prose</think><answer>x</answer>",  # tags are case-sensitive
        "<think>ünïcødé 推理</think><answer>是</answer>",
    ],
)
def test_well_formed(response: str) -> None:
    assert format_reward(response) == 1.0


@pytest.mark.parametrize(
    "response",
    [
        "",
        "B",
        "<answer>B</answer>",
        "<think>only thinking</think>",
        "<think>a</think>text<answer>b</answer>",  # something between the blocks
        "prefix <think>a</think><answer>b</answer>",
        "<think>a</think><answer>b</answer> suffix",
        "<answer>b</answer><think>a</think>",  # wrong order
        "<THINK>a</THINK><ANSWER>b</ANSWER>",  # case-sensitive tags
        "<Think>a</Think><Answer>b</Answer>",
        "<think>a</think><answer>b",  # unterminated
        "<think>a<answer>b</answer>",
        "<think>a</think><answer>b</answer>\n</think>",
    ],
)
def test_malformed(response: str) -> None:
    assert format_reward(response) == 0.0


def test_format_is_linear_on_huge_input() -> None:
    body = "<think>" + "x" * 200_000 + "</think><answer>y</answer>"
    assert format_reward(body) == 1.0
    assert format_reward("<think>" * 30_000 + "</answer>") == 0.0


@pytest.mark.parametrize(
    ("accuracy", "fmt", "weight", "expected"),
    [
        (1.0, 1.0, 1.0, 2.0),
        (1.0, 0.0, 1.0, 1.0),
        (0.0, 1.0, 0.5, 0.5),
        (0.25, 1.0, 0.0, 0.25),  # weight 0 disables format
        (2.0, 1.0, 1.0, 3.0),  # BMAS sum range goes up to 2
        (-0.5, 1.0, 1.0, 0.5),
    ],
)
def test_final_reward(accuracy: float, fmt: float, weight: float, expected: float) -> None:
    assert final_reward(accuracy, fmt, weight) == pytest.approx(expected)


@pytest.mark.parametrize("weight", [math.nan, math.inf, -math.inf])
def test_non_finite_weight_is_a_client_error(weight: float) -> None:
    with pytest.raises(ItemFieldError) as info:
        final_reward(1.0, 1.0, weight)
    assert info.value.field == "format_weight"


def test_overflowing_weight_is_a_client_error() -> None:
    with pytest.raises(ItemFieldError):
        final_reward(1e308, 1.0, 1e308)


@pytest.mark.parametrize("accuracy", [math.nan, math.inf])
def test_non_finite_component_is_our_bug(accuracy: float) -> None:
    with pytest.raises(ValueError):
        final_reward(accuracy, 1.0, 1.0)


# SPEC §7: exactly one think block then exactly one answer block, nothing further. Tags inside the
# think block are its content; the answer block holds none. This regex states the rule plainly
# (tempered dots); the scan in format.py must give the same verdict.
SPEC_REGEX = re.compile(
    r"<think>(?:(?!</think>).)*</think>\s*<answer>(?:(?!</?think>|</?answer>).)*</answer>", re.DOTALL
)


@pytest.mark.parametrize(
    "response",
    [
        "<think>a<answer>x</answer></think><answer>c</answer>",  # a draft answer is reasoning
        "<think>I will put the letter in <answer> tags.</think>\n<answer>B</answer>",
        "<think>a<think>b</think><answer>c</answer>",  # a <think> inside the think block is content
    ],
)
def test_tags_inside_the_think_block_keep_the_form(response: str) -> None:
    assert format_reward(response) == 1.0
    assert SPEC_REGEX.fullmatch(response.strip())


@pytest.mark.parametrize(
    "response",
    [
        "<think>a</think><answer>b</answer><think>c</think><answer>d</answer>",  # two rounds
        "<think>a</think><answer>b</answer><answer>c</answer>",  # two answers
        "<think>a</think><think>b</think><answer>c</answer>",  # two think blocks
        "<think>a<think>b</think></think><answer>c</answer>",  # a stray </think>
        "<think>a</think><answer>b<answer>c</answer></answer>",  # nested answers
        "<think>a</think><answer>b <think>c</think> d</answer>",  # reasoning inside the answer
        "<think>a</think><answer>b</answer>\n<answer>c</answer>",
    ],
)
def test_more_than_one_block_scores_zero(response: str) -> None:
    """Two think/answer rounds (or any second block) must not earn the format reward."""
    assert format_reward(response) == 0.0
    assert not SPEC_REGEX.fullmatch(response.strip())


def test_same_verdict_as_the_spec_regex_on_tag_soup() -> None:
    rng = random.Random(3)
    pieces = ["<think>", "</think>", "<answer>", "</answer>", " ", "\n", "x", "<", "think>", "</", "\t"]
    for _ in range(20_000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        if rng.random() < 0.5:
            text = "<think>" + text + "</answer>"
        expected = 1.0 if SPEC_REGEX.fullmatch(text.strip()) else 0.0
        assert format_reward(text) == expected, text


def test_linear_on_many_think_closers() -> None:
    """The regex backtracks quadratically here; a guard against that, not a benchmark (10x headroom)."""
    text = "<think>" + "</think> x" * 50_000 + "</answer>"
    started = time.thread_time()
    assert format_reward(text) == 0.0
    assert time.thread_time() - started < 2.0
