"""The answer span: the part of a response the accuracy rewards look at (SPEC §2).

Reasoning inside ``<think>`` must never earn accuracy (a model would learn to hedge there): an
``<answer>`` block counts only outside the think blocks, and with no answer block the think blocks
are cut before anything is read. Everything here is plain
``str`` scanning with single-literal regex searches, which is linear in the text length: responses
are untrusted model output and may be huge or adversarial.
"""

from __future__ import annotations

import re

_ANSWER_OPEN = re.compile(r"<answer>", re.IGNORECASE)
_ANSWER_CLOSE = re.compile(r"</answer>", re.IGNORECASE)
_THINK_OPEN = re.compile(r"<think>", re.IGNORECASE)
_THINK_CLOSE = re.compile(r"</think>", re.IGNORECASE)


def _think_end(text: str) -> int | None:
    """Where the first think block ends: 0 without one, None when it never closes.

    An orphan ``</think>`` before any ``<think>`` (a chat template that opened the block in the
    prompt) ends a block that began with the response.
    """
    first_open = _THINK_OPEN.search(text)
    first_close = _THINK_CLOSE.search(text)
    if first_close is not None and (first_open is None or first_close.start() < first_open.start()):
        return first_close.end()
    if first_open is None:
        return 0
    closing = _THINK_CLOSE.search(text, first_open.end())
    return None if closing is None else closing.end()


def answer_block(text: str) -> str | None:
    """Content of the first ``<answer>…</answer>`` block after the think block, unstripped; None
    when there is none (SPEC §2).

    A draft answer written inside ``<think>`` is reasoning, so the search starts where the first
    think block ends and skips any later think block as well. The next ``<answer>`` and the next
    ``<think>`` are each searched for only when the cursor has passed the last one found, so the
    whole scan is linear in the text length, however many blocks a response holds.
    """
    position = _think_end(text)
    if position is None:
        return None
    next_answer = _ANSWER_OPEN.search(text, position)
    next_think = _THINK_OPEN.search(text, position)
    while next_answer is not None:
        if next_think is not None and next_think.start() < next_answer.start():
            closing = _THINK_CLOSE.search(text, next_think.end())
            if closing is None:
                return None  # the rest is an unterminated think block
            position = closing.end()
            if next_answer.start() < position:
                next_answer = _ANSWER_OPEN.search(text, position)
            next_think = _THINK_OPEN.search(text, position)
            continue
        closing = _ANSWER_CLOSE.search(text, next_answer.end())
        if closing is None:
            return None  # no later <answer> can close either
        return text[next_answer.end() : closing.start()]
    return None


def strip_think(text: str) -> str:
    """Remove reasoning: every ``<think>…</think>`` block and whatever is not closed.

    Two unterminated shapes occur in practice. A truncated generation ``<think>…`` (no close): the
    rest is reasoning and is dropped. A chat template that put ``<think>`` in the prompt, so the
    response is ``…</think> answer``: the orphan close marks everything before it as reasoning.
    """
    first_open = _THINK_OPEN.search(text)
    first_close = _THINK_CLOSE.search(text)
    if first_close is not None and (first_open is None or first_close.start() < first_open.start()):
        text = text[first_close.end() :]
    kept: list[str] = []
    position = 0
    while True:
        opening = _THINK_OPEN.search(text, position)
        if opening is None:
            kept.append(text[position:])
            break
        kept.append(text[position : opening.start()])
        closing = _THINK_CLOSE.search(text, opening.end())
        if closing is None:
            break
        position = closing.end()
    return "".join(kept)


def answer_span(text: str) -> str:
    """What the accuracy rules score: the first answer block after the think block, else the
    response minus reasoning."""
    block = answer_block(text)
    if block is not None:
        return block.strip()
    return strip_think(text).strip()


__all__ = ["answer_block", "answer_span", "strip_think"]
