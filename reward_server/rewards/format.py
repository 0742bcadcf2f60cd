"""Format reward (SPEC §7): the whole response is ``<think>…</think>``, optional whitespace, ``<answer>…</answer>``.

The contents are arbitrary (they may span newlines and even mention the tags), so this is exactly
``re.fullmatch(r"<think>.*?</think>\\s*<answer>.*?</answer>", response.strip(), re.DOTALL)``, the
check R1-style trainers use. That regex backtracks quadratically on responses full of
``</think>``; the scan below gives the same answer in linear time. Which ``<answer>`` block is the
answer is the span rule's business (SPEC §2: the first one), not this one's.
"""

from __future__ import annotations

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"


def format_reward(response: str) -> float:
    """1.0 when some ``</think>`` is followed by optional whitespace and an ``<answer>`` that opens
    the final ``…</answer>`` block of a response starting with ``<think>``; else 0.0."""
    text = response.strip()
    if not (text.startswith(THINK_OPEN) and text.endswith(ANSWER_CLOSE)):
        return 0.0
    latest_answer_open = len(text) - len(ANSWER_CLOSE) - len(ANSWER_OPEN)
    close = text.find(THINK_CLOSE, len(THINK_OPEN))
    while close != -1:
        cursor = close + len(THINK_CLOSE)
        # The whitespace run after one </think> ends before the next one starts: linear overall.
        while cursor < len(text) and text[cursor].isspace():
            cursor += 1
        if cursor <= latest_answer_open and text.startswith(ANSWER_OPEN, cursor):
            return 1.0
        close = text.find(THINK_CLOSE, close + 1)
    return 0.0


__all__ = ["format_reward"]
