"""Prompt ids: what a client may send as ``prompt_id`` and how it is stored.

An id names a prompt across epochs (``group_id`` names one step's group). Integers and strings
are accepted and stored as text, so ``7`` and ``"7"`` are the same prompt (a dataset index sent by
one trainer and its string form by another must not split a prompt's history).
"""

from __future__ import annotations

MAX_PROMPT_ID_CHARS = 512


def prompt_id_problem(value: object) -> str | None:
    """Why ``value`` cannot be a prompt id, or None when it can."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return "must be a string or an integer"
    if isinstance(value, int):
        return None if -(2**63) <= value < 2**63 else "must be a 64-bit integer (or a string)"
    if not value.strip():
        return "must not be empty or blank"
    if len(value) > MAX_PROMPT_ID_CHARS:
        return f"is {len(value)} characters; the limit is {MAX_PROMPT_ID_CHARS}"
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        return "must not contain control characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid Unicode: it holds a lone surrogate such as \\ud800"
    return None


def canonical_prompt_id(value: str | int) -> str:
    return str(value)
