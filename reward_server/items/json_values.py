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


__all__ = ["MAX_DEPTH", "NON_FINITE", "TOO_DEEP", "loads_lenient", "value_problem"]
