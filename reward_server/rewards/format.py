"""Format reward (SPEC §7): the response is exactly ``<think>…</think>`` then ``<answer>…</answer>``.

Tags are case-sensitive and each appears exactly once, in that order. A regex such as
``<think>.*?</think>\\s*<answer>.*?</answer>`` would accept ``…</answer><answer>c</answer>``
(the lazy group stretches over the extra block) and nested tags, which teaches a policy to emit
several answers; counting the four tags closes that hole and is linear in the response length.
"""

from __future__ import annotations

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
_TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)


def format_reward(response: str) -> float:
    """1.0 when the stripped response is one think block, optional whitespace, one answer block."""
    text = response.strip()
    if not (text.startswith(THINK_OPEN) and text.endswith(ANSWER_CLOSE)):
        return 0.0
    if any(text.count(tag) != 1 for tag in _TAGS):
        return 0.0
    think_close = text.find(THINK_CLOSE)
    answer_open = text.find(ANSWER_OPEN)
    if answer_open < think_close + len(THINK_CLOSE):
        return 0.0
    between = text[think_close + len(THINK_CLOSE) : answer_open]
    return 0.0 if between.strip() else 1.0


__all__ = ["format_reward"]
