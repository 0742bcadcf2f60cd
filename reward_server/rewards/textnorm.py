"""Text folding shared by the exact-match fallbacks (MCQ option text, non-numeric chart answers).

Models and datasets differ in case, full-width characters, spacing and a trailing full stop; none
of that is the answer, so it is folded away before comparing. Linear time, no regex backtracking.
"""

from __future__ import annotations

import re
import string
import unicodedata

_WHITESPACE = re.compile(r"\s+")


def collapse_whitespace(text: str) -> str:
    """NFKC plus single spaces: lets later patterns use `` ?`` instead of ``\\s*`` (no backtracking)."""
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFKC", text)).strip()


# ASCII and the common CJK / typographic punctuation, stripped in C; rarer punctuation falls to the
# per-character loop, which then only sees what str.strip left (normally nothing).
_COMMON_STRIP = (
    "".join(c for c in string.punctuation if unicodedata.category(c).startswith("P"))
    + string.whitespace
    + "\u00a0\u3000「」『』。，、！？：；（）【】《》〈〉“”‘’…–—·¡¿«»"
)


def _is_punctuation(char: str) -> bool:
    return unicodedata.category(char).startswith("P")


def strip_punctuation(text: str) -> str:
    """Strip punctuation and whitespace from both ends (``"(Paris)."`` -> ``Paris``).

    Punctuation means Unicode category P*, so symbols such as ``$`` or ``+`` are kept.
    """
    text = text.strip(_COMMON_STRIP)
    start, end = 0, len(text)
    while start < end and (text[start].isspace() or _is_punctuation(text[start])):
        start += 1
    while end > start and (text[end - 1].isspace() or _is_punctuation(text[end - 1])):
        end -= 1
    return text[start:end]


def normalise_text(text: str) -> str:
    """The comparison key: NFKC, case-folded, whitespace collapsed, surrounding punctuation gone."""
    return strip_punctuation(collapse_whitespace(text).casefold())


__all__ = ["collapse_whitespace", "normalise_text", "strip_punctuation"]


def preview(text: str, limit: int = 60) -> str:
    """A short quote of client text for an error message: at most ``limit`` characters."""
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")
