"""The answer span (SPEC §2)."""

import time

import pytest

from reward_server.rewards.spans import answer_span, strip_think


@pytest.mark.parametrize(
    ("text", "span"),
    [
        ("<think>hmm</think><answer> B </answer>", "B"),
        ("<think>x</think>\n<ANSWER>\nyes\n</Answer>", "yes"),
        ("<answer>first</answer><answer>second</answer>", "first"),
        ("prefix <answer>a\nb</answer> suffix", "a\nb"),
        ("<answer></answer>", ""),
        ("<think>the answer is no</think> yes", "yes"),
        ("<think>a</think>b<think>c</think>d", "bd"),
        ("<think>truncated reasoning, yes", ""),
        ("reasoning from a template-opened think </think> 42", "42"),
        ("  plain answer  ", "plain answer"),
        ("", ""),
        ("<answer>unterminated", "<answer>unterminated"),
        ("<THINK>no</THINK> yes", "yes"),
        ("<answer>ünïcødé ✓</answer>", "ünïcødé ✓"),
    ],
)
def test_answer_span(text: str, span: str) -> None:
    assert answer_span(text) == span


def test_draft_answer_inside_think_is_reasoning() -> None:
    """SPEC §2: the answer is the first block after the think block, not a draft inside it."""
    assert answer_span("<think>draft <answer>A</answer> no wait</think><answer>B</answer>") == "B"
    assert answer_span("<think><answer>inside</answer></think>") == ""
    assert answer_span("<think><answer>inside</answer></think> outside") == "outside"
    assert answer_span("<THINK><ANSWER>A</ANSWER></THINK>\n<Answer> B </Answer>") == "B"
    # A chat template opened the think block in the prompt: the orphan close ends it.
    assert answer_span("reasoning <answer>A</answer> more </think><answer>C</answer>") == "C"


@pytest.mark.parametrize(
    ("text", "span"),
    [
        # Two rounds: the first answer after the first think block; later think blocks are skipped.
        ("<think>a</think><answer>X</answer><think>b</think><answer>Y</answer>", "X"),
        ("<think>a</think> <think>b <answer>A</answer></think><answer>B</answer>", "B"),
        ("<think>a</think> <think>never closed <answer>A</answer>", ""),
        ("<think>a<think>b</think> c <answer>D</answer>", "D"),
        ("<think>unterminated <answer>A</answer>", ""),
    ],
)
def test_answer_after_think_blocks(text: str, span: str) -> None:
    assert answer_span(text) == span


def test_strip_think_keeps_text_between_blocks() -> None:
    assert strip_think("a<think>x</think>b").strip() == "ab"


@pytest.mark.parametrize(
    "text",
    [
        "<answer>" * 25_000,
        "<think>" * 28_000,
        "</think><think>" * 13_000,
        "<think></think>" * 13_000,
        "<think></think>" * 13_000 + "<answer>x</answer>",
        "<think>x</think>" + "<think></think>" * 13_000 + "<answer>" + "y" * 100_000,
        "<answer" * 28_000,
        "x" * 200_000,
    ],
)
def test_adversarial_spans_are_linear(text: str) -> None:
    started = time.perf_counter()
    answer_span(text)
    assert time.perf_counter() - started < 0.5
