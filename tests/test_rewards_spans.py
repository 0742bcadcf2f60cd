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


def test_answer_block_wins_over_think_removal() -> None:
    assert answer_span("<think><answer>inside</answer></think>") == "inside"


def test_strip_think_keeps_text_between_blocks() -> None:
    assert strip_think("a<think>x</think>b").strip() == "ab"


@pytest.mark.parametrize(
    "text",
    [
        "<answer>" * 25_000,
        "<think>" * 28_000,
        "</think><think>" * 13_000,
        "<think></think>" * 13_000,
        "<answer" * 28_000,
        "x" * 200_000,
    ],
)
def test_adversarial_spans_are_linear(text: str) -> None:
    started = time.perf_counter()
    answer_span(text)
    assert time.perf_counter() - started < 0.5
