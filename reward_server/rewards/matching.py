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
# "not yes", "not no": a negated answer word is no answer at all (it is not the other word either).
_NEGATED = re.compile(r"\bnot (?:a )?$")
# "the answer is no", "answer: yes", "final answer - no": an explicit answer marker decides.
_YES_NO_MARKER = re.compile(
    r"\banswers?(?: (?:is|would be|should be|will be))?(?: ?[:=\-])? ?[(\[\"']? ?(yes|no)\b"
)
# "..., so yes." / "therefore, no" ending the span: a conclusion decides.
_YES_NO_CONCLUSION = re.compile(r"\b(?:so|therefore|thus|hence|overall|finally)[,:]? (yes|no)[ .!)\]\"']*$")
# "Yes, there is no dog": a leading "yes" + punctuation, and every later "no" a determiner
# ("no dog"), not an answer ("yes, no", "yes and no", "yes or no").
_LEADING_YES = re.compile(r"^[(\[\"']? ?yes ?[,.!;:]")
_NOT_A_NOUN = r"(?:and|or|but|nor|yes|no|maybe|perhaps|not)\b"
_DETERMINER_NO = re.compile(r"\bno (?!" + _NOT_A_NOUN + r")[a-z]")
# After a marked word: another answer word listed with it ("yes or no", "yes/no", "yes, no").
_YES_NO_CONTINUES = re.compile(
    r"[)\]\"']? ?[,/;|&+]? ?(?:(?:or|and|nor|maybe|perhaps)\b ?)?(?:yes|no)\b(?! (?!" + _NOT_A_NOUN + r")[a-z])"
)


def _answer_words(folded: str) -> list[re.Match[str]]:
    """Whole-word yes/no occurrences that are not negated."""
    return [m for m in _YES_NO.finditer(folded) if not _NEGATED.search(folded, max(0, m.start() - 7), m.start())]


def _decided(folded: str) -> str | None:
    """The word an explicit marker picks when the span names both yes and no; None if none does."""
    markers = list(_YES_NO_MARKER.finditer(folded))
    if any(_YES_NO_CONTINUES.match(folded, m.end()) for m in markers):
        return None  # "the answer is yes or no"
    marked = {m.group(1) for m in markers}
    if len(marked) == 1:
        return marked.pop()
    if marked:
        return None  # "the answer is yes or the answer is no"
    conclusion = _YES_NO_CONCLUSION.search(folded)
    if conclusion:
        return conclusion.group(1)
    if _LEADING_YES.match(folded):
        answers_no = [m for m in _YES_NO.finditer(folded) if m.group(1) == "no"]
        if all(_DETERMINER_NO.match(folded, m.start()) for m in answers_no):
            return "yes"
    return None


def extract_yes_no(text: str) -> str | None:
    """The yes/no word a span answers with, or None (SPEC §3).

    Whole words only (``know``, ``nothing``, ``yesterday`` are not answers); a negated word
    (``not yes``) is no answer. A span naming both (``yes and no``, ``yes/no``) answers nothing
    unless a marker decides it (``the answer is no``, ``…, so yes``): a policy must not be paid
    for hedging.
    """
    folded = collapse_whitespace(text).casefold()
    words = {m.group(1) for m in _answer_words(folded)}
    if len(words) == 1:
        return words.pop()
    if not words:
        return None
    return _decided(folded)


def yes_no_reward(span: str, truth: str) -> float:
    """1 when the span answers the truth's word ("yes" or "no"); no answer or a hedge scores 0."""
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
_LEADING_DELIMITER = re.compile(r"^([(\[])? ?([A-Za-z])")
# "C, because ...": a comma after a leading capital also starts an explanation (not "a, the cat").
_LEADING_COMMA = re.compile(r"^([A-Z]),(?: (.*))?$", re.DOTALL)
_BRACKETED = re.compile(r"[(\[] ?([A-Za-z]) ?[)\]]")
# A capital standing alone: not part of a word, a contraction ("I'm"), a compound ("X-ray") or an
# abbreviation ("U.S."). Three tiers, each one C-level search: any letter other than the pronoun
# "I" and an article-like "A" (followed by a lower-case word); then that "A"; then "I".
_ALONE_BEFORE = r"(?<![A-Za-z0-9'\-.])"
_ALONE_AFTER = r"(?![A-Za-z0-9'\-])(?!\.[A-Za-z])"
_CAPITAL_TIERS = (
    re.compile(_ALONE_BEFORE + r"([B-HJ-Z]|A(?! (?!(?:or|and|nor|vs)\b)[a-z]))" + _ALONE_AFTER),
    re.compile(_ALONE_BEFORE + r"(A)" + _ALONE_AFTER),
    re.compile(_ALONE_BEFORE + r"(I)" + _ALONE_AFTER),
)


# Another option letter named next to one already read: "A, B", "A/B", "A or B", "(A)(B)", "A. B".
# A capital "I" or "A" followed by a lower-case word is the pronoun or the article ("C, I think"),
# and a lower-case letter counts only before punctuation or the end ("a, b"), not "c, a triangle".
_OTHER_LETTER = (
    r"(?:[(\[] ?([A-Za-z]) ?[)\]]|([A-Z])(?![A-Za-z0-9'\-])(?!(?<=[AI]) [a-z])|([a-z])(?=[.,;:!?)\]]|$))"
)
_LIST_SEPARATOR = r" ?(?:[,/;|&+]|or\b|and\b|nor\b|vs\b\.?)? ?(?:(?:or|and)\b ?)?"
# What may follow a letter before the list goes on: its closing bracket or full stop.
_CONTINUES = re.compile(r" ?[)\]]?\.?(?![A-Za-z0-9'\-])" + _LIST_SEPARATOR + _OTHER_LETTER)
# Two option letters listed anywhere: the first a standalone capital, possibly bracketed.
_OPTION_LIST = re.compile(
    r"(?<![A-Za-z0-9'\-.])[(\[]? ?([A-Z]) ?[)\]]?\.?(?![A-Za-z0-9'\-])" + _LIST_SEPARATOR + _OTHER_LETTER
)
# An option written in option form inside explanation text: " B. 4 cm", " c) 5 cm", " D: text".
_OPTION_FORM = re.compile(r"(?<![^ ])([A-Za-z])(?:[.:] |\) |\)$)")


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


def _continued_letter(text: str, end: int) -> str | None:
    """The option letter listed right after position ``end`` ("A or B" at A's end: "B"), if any."""
    match = _CONTINUES.match(text, end)
    if match is None:
        return None
    return next(g for g in match.groups() if g).upper()


def _marked_letter(pattern: re.Pattern[str], text: str) -> tuple[str | None, bool]:
    """The letter every plausible marker agrees on, and whether there was any marker at all.

    Markers naming different letters ("the answer is A ... the answer is B"), or a marked letter
    with another listed after it ("the answer is A or B"), decide nothing: (None, True).
    """
    letters: set[str] = set()
    for match in pattern.finditer(text):
        if not _plausible(text, match):
            continue
        letter = match.group(2).upper()
        continued = _continued_letter(text, match.end())
        if continued is not None and continued != letter:
            return None, True
        letters.add(letter)
    if len(letters) == 1:
        return letters.pop(), True
    return None, bool(letters)


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


def _listed_letters(text: str) -> set[str]:
    """Every letter of every listed pair ("A B C D" gives A, B, C, D), upper-case."""
    letters: set[str] = set()
    position = 0
    while True:
        match = _OPTION_LIST.search(text, position)
        if match is None:
            return letters
        letters.update(g.upper() for g in match.groups() if g)
        # Continue from the second letter, so "A B C" also yields the pair (B, C).
        position = max(match.start() + 1, match.end() - 1)


def _names_other_option(rest: str, letter: str) -> bool:
    """Does the text after a leading "X." name another option (an option list, not explanation)?

    Explanation may mention letters ("(C) since angle B is 30°"); an option list writes them in
    option form ("A. 3 cm B. 4 cm"), brackets them, lists them, or is nothing but a letter.
    """
    other = _only_letter(rest)
    if other is not None:
        return other != letter
    named = {m.group(1).upper() for m in _BRACKETED.finditer(rest)}
    named |= {m.group(1).upper() for m in _OPTION_FORM.finditer(rest)}
    named |= _listed_letters(rest)
    return bool(named - {letter})


def _lone_capitals(text: str, tier: re.Pattern[str]) -> set[str]:
    return {m.group(1) for m in tier.finditer(text)}


def _letter_in(collapsed: str) -> str | None:
    """The one option letter a span commits to, or None for no letter or several (SPEC §3)."""
    if not collapsed:
        return None
    letter = _only_letter(collapsed)
    if letter:
        return letter
    letter, marked = _marked_letter(_ANSWER_MARKER, collapsed)
    if marked:
        return letter  # an explicit answer decides, or its disagreement decides nothing
    leading = _leading(collapsed)
    comma = _LEADING_COMMA.match(collapsed) if leading is None else None
    if comma:
        leading = comma.group(1), comma.group(2) or ""
    if leading:
        letter, rest = leading
        after_delimiter = _LEADING_DELIMITER.match(collapsed)
        assert after_delimiter is not None
        continued = _continued_letter(collapsed, after_delimiter.end(2))
        if (continued is not None and continued != letter) or _names_other_option(rest, letter):
            return None
        return letter
    # No decisive marker: every option the span names counts, and more than one is a hedge.
    candidates = {m.group(2).upper() for m in _OPTION_MARKER.finditer(collapsed) if _plausible(collapsed, m)}
    candidates |= {m.group(1).upper() for m in _BRACKETED.finditer(collapsed)}
    candidates |= _lone_capitals(collapsed, _CAPITAL_TIERS[0])
    candidates |= _listed_letters(collapsed)
    if len(candidates) == 1:
        return candidates.pop()
    if candidates:
        return None
    # Only the article-like "A" or the pronoun "I" stand alone: the weaker reading, one at a time.
    for tier in _CAPITAL_TIERS[1:]:
        found = _lone_capitals(collapsed, tier)
        if found:
            return found.pop()
    return None


def extract_option_letter(text: str) -> str | None:
    """The option letter a response chose, upper-case, or None (no letter, or a hedge).

    Decisive, in order: the whole span is a letter; "answer is X" (every such marker agreeing, no
    second letter listed after it); a leading "X." / "(X)" followed by explanation, not by more
    options. Otherwise the span must name exactly one option ("option X", "(X)", a lone capital):
    ``A B C D``, ``A/B``, ``A or B``, ``(A)(B)`` name several and score 0. The pronoun "I" and an
    article-like "A" count only when nothing else is there.
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
