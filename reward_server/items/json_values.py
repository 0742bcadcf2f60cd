"""Limits on JSON input that every path shares: nesting depth and finite numbers.

pydantic-core, which parses request bodies, refuses JSON nested deeper than about
:data:`MAX_DEPTH` levels; every other place JSON enters (a label's JSON text, the lone-surrogate
fallback, a ground truth handed over as a Python object, an offline row) applies the same limit,
so no input reaches a recursive ``json.dumps``/``json.loads`` deep enough to raise
``RecursionError``. NaN and Infinity literals parse (JSON's Python readers accept them) and are
then refused wherever a number is used.
"""

from __future__ import annotations

import json
import math
from typing import Any

MAX_DEPTH = 200  # pydantic-core's own limit for a body; the same everywhere else
TOO_DEEP = f"is nested more than {MAX_DEPTH} levels deep"
NON_FINITE = "holds a non-finite number (NaN or Infinity); numbers must be finite"


def value_problem(value: Any) -> str | None:
    """Why a parsed JSON value is unusable (too deep, or a NaN/Infinity anywhere), or None.

    Iterative, so a hostile value cannot exhaust the stack while being checked."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        current, depth = stack.pop()
        if isinstance(current, float):
            if not math.isfinite(current):
                return NON_FINITE
        elif isinstance(current, (list, dict)):
            if depth > MAX_DEPTH:
                return TOO_DEEP
            children = current.values() if isinstance(current, dict) else current
            stack.extend((child, depth + 1) for child in children)
    return None


def loads_lenient(data: str | bytes) -> Any:
    """``json.loads`` (which, unlike pydantic-core, reads lone surrogates such as ``"\\ud800"``),
    raising ValueError instead of RecursionError, and refusing what is nested too deeply."""
    try:
        parsed = json.loads(data)
    except RecursionError:
        raise ValueError(TOO_DEEP) from None
    problem = value_problem(parsed)
    if problem == TOO_DEEP:
        raise ValueError(problem)
    return parsed


_DECODER = json.JSONDecoder()
_SPACE = " \t\n\r"


def count_elements(body: bytes, key: str | None, stop_after: int) -> int | None:
    """How many elements the array at ``key`` of a JSON object body holds (``key`` None: the body
    is the array), counting no further than ``stop_after`` + 1; None when the body is not that shape
    (the full validation then says what is wrong).

    Why not parse: a 3 MB body of a million ``{}`` items is a million objects before a limit of
    8,192 can be checked (seconds of CPU, a gigabyte of memory). This walks the body with the C
    decoder one element at a time and stops past the limit: at most ``stop_after`` + 1 elements are
    ever built, and each is dropped at once. ``bytes.count(b",")`` first bounds the count from
    above (n elements need n - 1 commas), so an ordinary body costs one C scan and nothing else.
    """
    if body.count(b",") < stop_after:
        return None  # cannot exceed the limit: let the validation count
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    try:
        at = _skip(text, 0)
        if key is not None:
            at = _find_key(text, at, key)
            if at is None:
                return None
        if text[at] != "[":
            return None
        at = _skip(text, at + 1)
        if text[at] == "]":
            return 0
        count = 0
        while True:
            _, at = _DECODER.raw_decode(text, at)
            count += 1
            if count > stop_after:
                return count
            at = _skip(text, at)
            if text[at] == "]":
                return count
            if text[at] != ",":
                return None
            at = _skip(text, at + 1)
    except (ValueError, IndexError, RecursionError):
        return None


def _skip(text: str, at: int) -> int:
    while text[at] in _SPACE:
        at += 1
    return at


def _find_key(text: str, at: int, key: str) -> int | None:
    """The position of ``key``'s value in the object that starts at ``at`` (its other values are
    decoded and dropped one by one), or None."""
    if text[at] != "{":
        return None
    at = _skip(text, at + 1)
    while text[at] != "}":
        name, at = _DECODER.raw_decode(text, at)
        at = _skip(text, at)
        if text[at] != ":":
            return None
        at = _skip(text, at + 1)
        if name == key:
            return at
        _, at = _DECODER.raw_decode(text, at)
        at = _skip(text, at)
        if text[at] == ",":
            at = _skip(text, at + 1)
    return None


__all__ = ["MAX_DEPTH", "NON_FINITE", "TOO_DEEP", "count_elements", "loads_lenient", "value_problem"]
