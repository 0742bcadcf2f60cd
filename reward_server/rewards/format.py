"""Format reward (SPEC §7): exactly one ``<think>…</think>``, optional whitespace, exactly one ``<answer>…</answer>``.

The think block runs from the opening ``<think>`` to the first ``</think>``; whatever it holds is
reasoning, tags included (a model may well write "I will put the letter in <answer> tags"). The
answer block runs from the ``<answer>`` after it to the first ``</answer>``, which must end the
response, and holds no think/answer tag of its own. So a second round (``…</answer><think>…``),
a second answer (``<answer>b</answer><answer>c</answer>``), a stray ``</think>`` or nested tags
all score 0: a policy is paid for one reasoning block and one answer, not for repeating the form.
Tags are case-sensitive. Each step is one ``str.find`` from where the previous one stopped, so the
check is linear in the response length (the fullmatch regex with ``.*?`` backtracks quadratically).
"""

from __future__ import annotations

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)


def format_reward(response: str) -> float:
    """1.0 for ``<think>…</think>`` + optional whitespace + ``<answer>…</answer>`` and nothing
    more (surrounding whitespace ignored, no tag inside the answer); else 0.0."""
    text = response.strip()
    if not (text.startswith(THINK_OPEN) and text.endswith(ANSWER_CLOSE)):
        return 0.0
    think_close = text.find(THINK_CLOSE, len(THINK_OPEN))
    if think_close == -1:
        return 0.0
    cursor = think_close + len(THINK_CLOSE)
    while cursor < len(text) and text[cursor].isspace():
        cursor += 1
    if not text.startswith(ANSWER_OPEN, cursor):
        return 0.0
    # "<answer>" and "</answer>" cannot overlap (no suffix of one begins the other).
    content = text[cursor + len(ANSWER_OPEN) : len(text) - len(ANSWER_CLOSE)]
    if any(tag in content for tag in TAGS):
        return 0.0
    return 1.0


__all__ = ["format_reward"]
