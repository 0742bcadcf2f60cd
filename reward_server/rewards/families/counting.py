"""``counting`` (SPEC §13d): the one count the span names equals the truth's.

A count is written in digits (``3``, ``3.0``, ``1,200``) or as a number word from ``zero`` to
``twenty``; the words around it do not matter (``3 apples``, ``There are three dogs.``). A span
that names several *different* numbers (``3 or 4``, ``3-4``, ``0 1 2 3``, ``two or three``) is a
hedge and scores 0; the same number twice (``3 (three)``) is one answer. A negative or fractional
number is never a count. Every number in the span counts, so a response that reasons inside the
answer block (``2 rows of 3, so 6``) names several: the count belongs in the answer alone.
"""

from __future__ import annotations

import re

from reward_server.rewards.errors import InvalidGroundTruth
from reward_server.rewards.family import RewardFamily, Score
from reward_server.rewards.options import ResolvedOptions
from reward_server.rewards.textnorm import preview

_WORD_LIST = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
    "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty",
)
WORDS = {word: value for value, word in enumerate(_WORD_LIST)}
# A number: an optional minus that is not a dash between two words or numbers ("3-4", "COVID-19"),
# digits with optional thousands separators and decimals, not glued to letters or other digits.
# Or a number word, whole. Linear: no nested quantifiers.
_NUMBER = re.compile(
    r"(?P<sign>(?<![\w.)\]])-)?(?<![\w.])(?P<digits>\d{1,3}(?:,\d{3})+(?![\d])|\d+)(?P<decimals>\.\d+)?(?![\w]|\.\d)"
    r"|\b(?P<word>" + "|".join(WORDS) + r")\b",
    re.IGNORECASE,
)


def numbers_named(text: str) -> list[float]:
    """Every number the text names, in order, as a float (a word as its value)."""
    found: list[float] = []
    for match in _NUMBER.finditer(text):
        word = match.group("word")
        if word is not None:
            found.append(float(WORDS[word.lower()]))
            continue
        value = float(match.group("digits").replace(",", "") + (match.group("decimals") or ""))
        found.append(-value if match.group("sign") else value)
    return found


def read_count(text: str) -> int | None:
    """The one count the text names, or None: no number, several different numbers, or a number
    that is not a non-negative integer."""
    values = set(numbers_named(text))
    if len(values) != 1:
        return None
    (value,) = values
    if value < 0 or not value.is_integer():
        return None
    return int(value)


class Counting(RewardFamily):
    name = "counting"
    aliases = ("count",)
    summary = "exact count: the one integer (digits or zero..twenty) the answer names equals the truth"

    def parse_truth(self, text: str) -> int:
        values = set(numbers_named(text))
        if len(values) != 1:
            problem = "no number" if not values else "several different numbers"
            raise InvalidGroundTruth(
                f"counting ground truth names {problem}; give one count: {preview(text)}"
            )
        (value,) = values
        if value < 0 or not value.is_integer():
            raise InvalidGroundTruth(f"counting ground truth must be a non-negative integer: {preview(text)}")
        return int(value)

    def score(self, span: str, truth: int, options: ResolvedOptions) -> Score:
        count = read_count(span)
        return Score(1.0 if count == truth else 0.0, parsed=count)
