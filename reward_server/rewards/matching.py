"""Matching reward for yes/no and multiple-choice items (SPEC §3): binary, exact.

Extraction is deliberately ordered from explicit to implicit. Prose is full of capital letters that
are not options (the pronoun "I", the article "A", "X-ray"), so an explicit marker ("the answer is",
"option", a bracketed letter) always beats a letter that merely stands alone. All patterns run on
whitespace-collapsed text and use only bounded optional spaces, so they stay linear on huge inputs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from reward_server.rewards.textnorm import collapse_whitespace, normalise_text, strip_punctuation

# ---------------------------------------------------------------------------------------- yes/no

_YES_NO = re.compile(r"\b(yes|no)\b")


def extract_yes_no(text: str) -> str | None:
    """The first whole word yes/no (``know``, ``nothing``, ``yesterday`` are not answers)."""
    match = _YES_NO.search(collapse_whitespace(text).casefold())
    return match.group(1) if match else None


def yes_no_reward(span: str, truth: str) -> float:
    """1 when the span's first yes/no word equals the truth's ("yes" or "no"); no word scores 0."""
    return 1.0 if extract_yes_no(span) == truth else 0.0


# ------------------------------------------------------------------------------------------- MCQ

_AFTER_LETTER_OK = frozenset(".,;:!?)]")
# "The answer is (C).", "answer: B", "Answer - option c", "answers = [D]".
_ANSWER_MARKER = re.compile(
    r"\banswers?(?: (?:is|would be|should be|will be))?(?: ?[:=\-])?(?: (?:option|choice))?"
    r" ?([(\[])? ?([A-Za-z])(?![A-Za-z0-9'\-])",
    re.IGNORECASE,
)
# "Option A", "choice (b)", "the option is C".
_OPTION_MARKER = re.compile(
    r"\b(?:option|choice)(?: is)?(?: ?:)? ?([(\[])? ?([A-Za-z])(?![A-Za-z0-9'\-])", re.IGNORECASE
)
# "A. 3 cm", "(A) 3 cm", "A: text", "b) text": a letter, a delimiter, then the option text.
_LEADING = re.compile(r"^([(\[])? ?([A-Za-z]) ?[)\].:](?: (.*))?$", re.DOTALL)
_BRACKETED = re.compile(r"[(\[] ?([A-Za-z]) ?[)\]]")
# A capital standing alone: not part of a word, a contraction ("I'm"), a compound ("X-ray") or an
# abbreviation ("U.S."). Three tiers, each one C-level search: any letter other than the pronoun
# "I" and an article-like "A" (followed by a lower-case word); then that "A"; then "I".
_ALONE_BEFORE = r"(?<![A-Za-z0-9'\-.])"
_ALONE_AFTER = r"(?![A-Za-z0-9'\-])(?!\.[A-Za-z])"
_CAPITAL_TIERS = (
    re.compile(_ALONE_BEFORE + r"([B-HJ-Z]|A(?! [a-z]))" + _ALONE_AFTER),
    re.compile(_ALONE_BEFORE + r"(A)" + _ALONE_AFTER),
    re.compile(_ALONE_BEFORE + r"(I)" + _ALONE_AFTER),
)


def _plausible(text: str, match: re.Match[str]) -> bool:
    """After a marker, a lower-case letter must look like an answer, not the article "a" in prose."""
    bracket, letter = match.group(1), match.group(2)
    if bracket or letter.isupper():
        return True
    following = text[match.end() : match.end() + 1]
    return following == "" or following in _AFTER_LETTER_OK


def _first_marked(pattern: re.Pattern[str], text: str) -> str | None:
    for match in pattern.finditer(text):
        if _plausible(text, match):
            return match.group(2).upper()
    return None


def _leading(collapsed: str) -> tuple[str, str] | None:
    match = _LEADING.match(collapsed)
    if match is None:
        return None
    return match.group(2).upper(), match.group(3) or ""


def split_leading_option(text: str) -> tuple[str, str] | None:
    """``"(A) 3 cm"`` -> ``("A", "3 cm")``: a leading option letter with a delimiter, and the rest."""
    return _leading(collapse_whitespace(text))


def _only_letter(collapsed: str) -> str | None:
    """``A``, ``a``, ``(A)``, ``[a]``, ``A.``, ``A)``: the span is nothing but one letter."""
    core = strip_punctuation(collapsed)
    if len(core) == 1 and core.isascii() and core.isalpha():
        return core.upper()
    return None


def _lone_capital(text: str) -> str | None:
    """Best standalone capital: any letter beats an article-like "A", which beats the pronoun "I"."""
    for tier in _CAPITAL_TIERS:
        match = tier.search(text)
        if match:
            return match.group(1)
    return None


def _letter_in(collapsed: str) -> str | None:
    if not collapsed:
        return None
    letter = _only_letter(collapsed) or _first_marked(_ANSWER_MARKER, collapsed)
    if letter:
        return letter
    leading = _leading(collapsed)
    if leading:
        return leading[0]
    letter = _first_marked(_OPTION_MARKER, collapsed)
    if letter:
        return letter
    bracketed = _BRACKETED.search(collapsed)
    if bracketed:
        return bracketed.group(1).upper()
    return _lone_capital(collapsed)


def extract_option_letter(text: str) -> str | None:
    """The option letter a response chose, upper-case, or None.

    Order: the whole span is a letter; "answer is X"; a leading "X." / "(X)" with option text;
    "option X"; the first bracketed letter; a lone capital (the pronoun "I" and an article-like "A"
    only when nothing else is there).
    """
    return _letter_in(collapse_whitespace(text))


@dataclass(frozen=True)
class McqTruth:
    """A parsed MCQ ground truth: an option letter, its option text, or both."""

    letter: str | None
    option_text: str  # normalised; "" when the truth is a bare letter
    full_text: str  # the whole truth, normalised

    @classmethod
    def parse(cls, truth: str) -> McqTruth:
        """A truth is a letter only in unambiguous shapes; ``Vitamin C`` stays option text."""
        collapsed = collapse_whitespace(truth)
        full = normalise_text(collapsed)
        letter = _only_letter(collapsed)
        if letter:
            return cls(letter=letter, option_text="", full_text=full)
        leading = _leading(collapsed)
        if leading and normalise_text(leading[1]):
            return cls(letter=leading[0], option_text=normalise_text(leading[1]), full_text=full)
        letter = _first_marked(_ANSWER_MARKER, collapsed)
        if letter:
            return cls(letter=letter, option_text="", full_text=full)
        marked = _OPTION_MARKER.match(collapsed)  # "Option B", "Choice (C)": only as the truth's start
        if marked and _plausible(collapsed, marked):
            return cls(letter=marked.group(2).upper(), option_text="", full_text=full)
        return cls(letter=None, option_text=full, full_text=full)


def mcq_reward(span: str, truth: McqTruth) -> float:
    """1 when the response picks the truth's option, by letter when both have one, else by text."""
    collapsed = collapse_whitespace(span)
    span_text = strip_punctuation(collapsed.casefold())
    if not span_text:
        return 0.0
    if span_text == truth.full_text or (truth.option_text and span_text == truth.option_text):
        return 1.0
    if truth.letter is not None:
        return 1.0 if _letter_in(collapsed) == truth.letter else 0.0
    leading = _leading(collapsed)
    if leading and normalise_text(leading[1]) == truth.option_text:
        return 1.0
    return 0.0


__all__ = [
    "McqTruth",
    "extract_option_letter",
    "extract_yes_no",
    "mcq_reward",
    "split_leading_option",
    "yes_no_reward",
]
