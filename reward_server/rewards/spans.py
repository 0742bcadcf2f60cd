"""The answer span: the part of a response the accuracy rewards look at (SPEC §2).

Reasoning inside ``<think>`` must never earn accuracy (a model would learn to hedge there), so with
no ``<answer>`` block the think blocks are cut before anything is read. Everything here is plain
``str`` scanning with single-literal regex searches, which is linear in the text length: responses
are untrusted model output and may be huge or adversarial.
"""

from __future__ import annotations

import re

_ANSWER_OPEN = re.compile(r"<answer>", re.IGNORECASE)
_ANSWER_CLOSE = re.compile(r"</answer>", re.IGNORECASE)
_THINK_OPEN = re.compile(r"<think>", re.IGNORECASE)
_THINK_CLOSE = re.compile(r"</think>", re.IGNORECASE)


def answer_block(text: str) -> str | None:
    """Content of the first ``<answer>…</answer>`` block, unstripped; None when there is none.

    The first opening tag pairs with the first closing tag after it. If that opening tag has no
    closing tag, no later one can have one either, so one forward pass decides.
    """
    opening = _ANSWER_OPEN.search(text)
    if opening is None:
        return None
    closing = _ANSWER_CLOSE.search(text, opening.end())
    if closing is None:
        return None
    return text[opening.end() : closing.start()]


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
    """What the accuracy rules score: the first answer block, else the response minus reasoning."""
    block = answer_block(text)
    if block is not None:
        return block.strip()
    return strip_think(text).strip()


__all__ = ["answer_block", "answer_span", "strip_think"]
