"""Chart reward (SPEC §4): one number from the response against the truth, 1 % relative tolerance.

Chart, table and document answers arrive dressed up: ``$1,234.50``, ``45%``, ``-3.2e3``,
``12 cm``. The dressing is parsed away but never applied: a unit word is ignored (``3.5 million``
is 3.5, not 3.5e6) because the truth is written the same way in the datasets, and guessing
magnitudes would turn near misses into matches. A percentage is the one exception, because
datasets really do mix ``45%`` and ``0.45``; either reading counts.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from reward_server.rewards.textnorm import normalise_text

RELATIVE_TOLERANCE = 1e-2

# Sign and currency in either order, strict thousands groups (``1,2,3`` is three numbers, not
# 123), decimals, exponent, optional ``%``. Every quantifier is bounded or followed by a disjoint
# token, so a failed attempt costs O(1) and a scan is linear.
_NUMBER = re.compile(
    r"(?=[-+\u2212$€£¥\d.])"  # cheap first-character filter: most positions fail right here
    r"(?P<sign>[-+\u2212])?(?P<currency>[$€£¥])?(?P<sign2>[-+\u2212])?"
    r"(?P<digits>\d{1,3}(?:,\d{3})+(?!\d)(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
    r"(?P<exponent>[eE][-+]?\d+)?"
    r"(?P<percent> ?(?:%|percent\b))?"
)
_DIGIT = re.compile(r"\d")


@dataclass(frozen=True)
class ParsedNumber:
    """A number as written: its value (``%`` not applied) and whether it carried a percent sign."""

    value: float
    percent: bool
    start: int
    end: int


def _to_number(match: re.Match[str], text: str) -> ParsedNumber | None:
    literal = match.group("digits").replace(",", "") + (match.group("exponent") or "")
    try:
        value = float(literal)
    except (ValueError, OverflowError):
        return None
    if not math.isfinite(value):
        return None
    start = match.start()
    sign = match.group("sign")
    if sign and start > 0 and text[start - 1].isalnum():
        # "COVID-19", "2-3": a hyphen right after a word or digit is a dash, not a minus.
        sign = None
        start += 1
    sign = sign or match.group("sign2")
    if sign in ("-", "\u2212"):
        value = -value
    return ParsedNumber(value=value, percent=bool(match.group("percent")), start=start, end=match.end())


def find_numbers(text: str) -> list[ParsedNumber]:
    """Every finite number in ``text``, in order; ``1e999`` and friends are not numbers."""
    found = []
    for match in _NUMBER.finditer(text):
        number = _to_number(match, text)
        if number is not None:
            found.append(number)
    return found


def parse_number(text: str) -> ParsedNumber | None:
    """The response's number: the last finite one in the span.

    The main case is a span that is just a number. In a sentence the answer usually comes last
    ("In 2019 the value was 45" -> 45, "The value is 12,000." -> 12000). Only the matches from
    the end are converted, so a huge list of numbers costs one regex pass.
    """
    for match in reversed(list(_NUMBER.finditer(text))):
        number = _to_number(match, text)
        if number is not None:
            return number
    return None


def parse_numeric_truth(text: str) -> ParsedNumber | None:
    """A truth is numeric when it is one number, optionally followed by a digit-free unit or ``%``.

    ``12 cm``, ``$1,234.50``, ``45%`` are numeric; ``Q3 2019`` or ``2019-2020`` are labels and
    fall back to exact text match, so a response "2019" cannot pass for "Q3 2019".
    """
    stripped = text.strip().strip("\"'`\u201c\u201d\u2018\u2019 ")  # a JSON-dumped "12" is still 12
    numbers = find_numbers(stripped)
    if len(numbers) != 1 or numbers[0].start != 0:
        return None
    if _DIGIT.search(stripped, numbers[0].end):
        return None
    return numbers[0]


def _close(predicted: float, target: float) -> bool:
    if target == 0:
        return abs(predicted) < RELATIVE_TOLERANCE
    error = abs(predicted - target) / abs(target)
    return math.isfinite(error) and error < RELATIVE_TOLERANCE


def _readings(number: ParsedNumber, other: ParsedNumber) -> tuple[float, ...]:
    """``45%`` reads as 45 or 0.45, but only against a side without ``%`` (45% is not 0.45%)."""
    if number.percent and not other.percent:
        return (number.value, number.value / 100.0)
    return (number.value,)


def numbers_match(predicted: ParsedNumber, target: ParsedNumber) -> bool:
    """Within 1 % relative error (absolute 1e-2 around zero), under either percent reading."""
    return any(_close(p, t) for p in _readings(predicted, target) for t in _readings(target, predicted))


@dataclass(frozen=True)
class ChartTruth:
    """A chart truth: its number when numeric, and its normalised text for the fallback."""

    number: ParsedNumber | None
    text: str

    @classmethod
    def parse(cls, truth: str) -> ChartTruth:
        return cls(number=parse_numeric_truth(truth), text=normalise_text(truth))


def chart_reward(span: str, truth: ChartTruth) -> float:
    """1 when the span's number matches a numeric truth, or its text equals a non-numeric one."""
    if truth.number is None:
        return 1.0 if normalise_text(span) == truth.text and truth.text else 0.0
    predicted = parse_number(span)
    if predicted is None:
        return 0.0
    return 1.0 if numbers_match(predicted, truth.number) else 0.0


__all__ = [
    "RELATIVE_TOLERANCE",
    "ChartTruth",
    "ParsedNumber",
    "chart_reward",
    "find_numbers",
    "numbers_match",
    "parse_number",
    "parse_numeric_truth",
]
