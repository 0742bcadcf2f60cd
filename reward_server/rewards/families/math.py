"""``math`` (SPEC §13a): the answer is mathematically equivalent to the truth, as Hugging Face's
``math-verify`` (0.9.x) decides: ``verify(gold, prediction)``, the gold first (it is not symmetric).

Where it runs: ``runs = POOL``. math-verify's parser and sympy can hang on hostile input (issue
#65 of Math-Verify), and their own timeouts use ``signal.alarm``, which only works on a process's
main thread, so verification runs in the pool's killable worker processes under
``--math-timeout-seconds`` and math-verify's own timeouts are switched off (``parsing_timeout`` and
``timeout_seconds`` None). ``parse_truth`` runs in the server and never calls math-verify (it could
hang there): it checks that the extra is installed and passes the text on; the worker parses the
gold once (cached) and a gold that parses to nothing is a 422 naming the item.

How a text is read (gold or prediction):

* Math delimiters (``$…$``, ``\\(…\\)``, ``\\[…\\]``, ``\\boxed{…}``) or prose: math-verify's
  ``parse`` as written, LaTeX and plain-expression extraction.
* A *bare expression*, with no delimiter and no word of two or more letters outside LaTeX commands
  and ``\\text{…}`` (``2\\pi``, ``\\frac{\\sqrt3}{2}``, ``x^2+1``, ``(3, -1)``, ``3, 4``, ``50%``), is one
  LaTeX expression: ``parse("$text$")`` (verl's math-verify reward boxes its golds the same way),
  else ``parse`` as written. Read plainly, ``2\\pi`` would be ``2`` and ``x+1`` nothing: a gold
  read that way would pay wrong answers. Numbers side by side (``3 4``, ``1 000``) are not one
  expression (LaTeX would add them up) and are read plainly, and so is anything over 256
  characters.

The prediction: the contents of the span's ``\\boxed{…}`` answers if it has any (a balanced-brace
scan, nested braces included; an unclosed box is not an answer), each read as ``\\boxed{content}``;
otherwise the whole span as above.

Hedges score 0 (SPEC §13): several boxed answers that are not all equivalent to each other; numbers
side by side (``0 1 2 3``, in a box or not); and, for a span read by extraction, several answers
that are not all equivalent. math-verify's ``parse`` keeps only one extraction (the rightmost match
of the first priority group that yields one), so ``3 or 4`` would read as ``4``. Here every match of
that same group is extracted (a match inside a longer one is part of it: ``1/2`` is not also
``1``) and all must be equivalent; when the group is an answer marker (``The answer is 3``,
``final answer: …``), the rest of that sentence counts too, so ``The answer is 3 or 4`` is a hedge
while reasoning *before* a marker (``2x = 10, so the answer is 5``) is not. Without a marker or a
box every expression in the span is a candidate: reasoning belongs in the think block. Several
values meant together are written as one LaTeX answer (``\\boxed{3, -3}``, ``$3$ or $-3$``, which
math-verify reads as a set) and compared as a set. More than 256 expressions (or boxes) is a list:
0 before any is verified.

The candidates come from math-verify's own patterns and extraction (``get_extraction_regexes``,
``extract_match`` of ``math_verify.parser``), so they are exactly what its ``parse`` chooses among;
these are 0.9.x internals, which is one reason the extra pins ``<0.10``.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from reward_server.errors import MissingExtra
from reward_server.rewards.errors import InvalidGroundTruth
from reward_server.rewards.family import RewardFamily, Runs, Score
from reward_server.rewards.options import ResolvedOptions
from reward_server.rewards.textnorm import preview

INSTALL_HINT = 'pip install "mixed-reward[math]"'
# math-verify's patterns without an answer marker ("try_extract_without_anchor"); lower
# priorities are markers (answer:, final answer is) and boxes.
PLAIN_PRIORITY = 300
# More distinct candidates than this in one span is a list, not an answer: scored 0 without
# verifying them all (each verification may cost milliseconds of sympy).
MAX_CANDIDATES = 64
# More matches than this in the group an answer is read from is a list (``1 1 1 …``, ``$1$ $1$ …``),
# scored 0 before any is extracted: extracting thousands costs seconds of sympy.
MAX_MATCHES = 256
# A bare expression longer than this is not an answer someone wrote but garbage, and LaTeX parsing
# of garbage (5,000 nested brackets, 20,000 juxtaposed symbols) takes sympy tens of seconds: it is
# read plainly instead, which is linear.
MAX_BARE_CHARS = 256
GOLD_CACHE = 4096

_DELIMITER = re.compile(r"(?<!\\)\$|\\\(|\\\[|\\boxed\b")
_TEXT_COMMAND = re.compile(r"\\(?:text\w*|math(?:rm|bf|it|sf|tt)|operatorname|mbox)\s*\{[^{}]*\}")
_COMMAND = re.compile(r"\\[A-Za-z]+")
_WORD = re.compile(r"[A-Za-z]{2,}")
_SIDE_BY_SIDE = re.compile(r"\d\s+\.?\d")
_BOX = re.compile(r"\\boxed\s*\{")
_SENTENCE_END = re.compile(r"[.!?;](?=\s|$)|\n")


class _DropDisabledTimeoutWarning(logging.Filter):
    """math-verify warns once per process that its timeouts are off; here that is the design (the
    pool's deadline kills overrunning workers), so the warning is noise in every worker's log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


@functools.cache
def _math_verify() -> Any:
    """math_verify, imported on first use in a worker (a server that scores no math never loads
    sympy), its timeout warning filtered. Installed but broken (an antlr4 runtime of another
    version, a half-installed dependency): the item is a 422 ``missing_extra`` saying why, not a
    server error (``parse_truth`` only checks that the modules exist: importing them there would
    load sympy into the server)."""
    try:
        import math_verify
        import math_verify.grader
        import math_verify.parser
    except Exception as exc:  # noqa: BLE001 - any import failure means the extra is unusable
        raise MissingExtra(
            f"task type math needs the optional extra [math], which is installed but cannot be imported "
            f"({type(exc).__name__}: {exc}): {INSTALL_HINT}"
        ) from None

    for name in ("math_verify.parser", "math_verify.grader"):
        logging.getLogger(name).addFilter(_DropDisabledTimeoutWarning())
    return math_verify


@functools.cache
def missing_modules() -> tuple[str, ...]:
    """The modules of the ``[math]`` extra this interpreter lacks (found without importing them)."""
    return tuple(name for name in ("math_verify", "latex2sympy2_extended", "antlr4")
                 if importlib.util.find_spec(name) is None)


def is_bare_expression(text: str) -> bool:
    """No math delimiter, no word outside LaTeX commands, no numbers side by side, not too long:
    one expression."""
    if len(text) > MAX_BARE_CHARS or _DELIMITER.search(text) or _SIDE_BY_SIDE.search(text):
        return False
    return _WORD.search(_COMMAND.sub(" ", _TEXT_COMMAND.sub(" ", text))) is None


def _parse(text: str) -> list[Any]:
    return _math_verify().parse(text, parsing_timeout=None)


def read(text: str) -> list[Any]:
    """``parse``'s result for ``text`` (a sympy value and its string, or a string, or nothing), a
    bare expression read as one LaTeX expression first."""
    if is_bare_expression(text):
        inline = _parse(f"${text}$")
        if any(not isinstance(value, str) for value in inline):
            return inline
    return _parse(text)


def equivalent(first: Sequence[Any], second: Sequence[Any]) -> bool:
    """math-verify equivalence either way round (two candidates have no gold between them)."""
    verify = _math_verify().verify
    return bool(verify(list(first), list(second), timeout_seconds=None)
                or verify(list(second), list(first), timeout_seconds=None))


def boxed_contents(text: str) -> list[str]:
    """The contents of every complete ``\\boxed{…}`` in order, nested braces included (escaped
    braces ``\\{`` are content); a box inside a box is part of the outer one; an unclosed box is
    not an answer."""
    contents: list[str] = []
    position = 0
    while (match := _BOX.search(text, position)) is not None:
        depth, index = 1, match.end()
        while index < len(text) and depth:
            char = text[index]
            if char == "\\":
                index += 2  # a command or an escaped character, braces included
                continue
            depth += {"{": 1, "}": -1}.get(char, 0)
            index += 1
        if depth:
            break  # unclosed: neither it nor anything after it is a box
        contents.append(text[match.end() : index - 1])
        position = index
    return contents


class TooManyAnswers(Exception):
    """A span listing more expressions than any answer has (MAX_MATCHES): a hedge."""


@dataclass(frozen=True)
class _Candidate:
    start: int
    end: int
    value: Any
    text: str


def _outermost(found: list[_Candidate]) -> list[_Candidate]:
    """Drop each candidate that lies inside another (the expression ``1/2`` holds the number ``1``)."""
    kept: list[_Candidate] = []
    reach = -1
    for candidate in sorted(found, key=lambda c: (c.start, -c.end)):
        if candidate.end <= reach:
            continue
        kept.append(candidate)
        reach = candidate.end
    return kept


def candidates(text: str) -> list[_Candidate]:
    """Every answer math-verify's extraction finds in ``text`` in the group its ``parse`` reads
    from (module docstring): that group's extractions, outermost only, plus, when the group is an
    answer marker, the plain expressions in the rest of the marker's sentence. Raises
    :class:`TooManyAnswers` for a list longer than any answer."""
    parser = _math_verify().parser
    configs = [parser.LatexExtractionConfig(), parser.ExprExtractionConfig()]
    groups: dict[int, list[tuple[re.Match[str], Any]]] = {}
    for patterns, target in parser.get_extraction_regexes(configs):
        for pattern, priority in patterns:
            groups.setdefault(priority, []).extend((match, target) for match in pattern.finditer(text))

    def extracted(priority: int, start: int = 0, stop: int | None = None) -> list[_Candidate]:
        found = []
        window = [(match, target) for match, target in groups.get(priority, ())
                  if start <= match.start() and (stop is None or match.start() < stop)]
        if len(window) > MAX_MATCHES:
            raise TooManyAnswers(f"{len(window)} expressions")
        for match, target in window:
            try:
                value, shown = parser.extract_match(match, target)
            except Exception:  # noqa: BLE001, S112 - math-verify's own parse treats any failure as no match
                continue
            if value is not None:
                found.append(_Candidate(match.start(), match.end(), value, str(shown)))
        return _outermost(found)

    for priority in sorted(groups):
        chosen = extracted(priority)
        if not chosen or priority >= PLAIN_PRIORITY:
            if chosen:
                return chosen
            continue
        # An answer marker: the plain expressions in the rest of its sentence are answers too.
        first_end = min(c.end for c in chosen)
        sentence_end = _SENTENCE_END.search(text, first_end)
        trailing = extracted(PLAIN_PRIORITY, first_end, sentence_end.start() if sentence_end else None)
        spans = [(o.start, o.end) for o in chosen]
        return chosen + [c for c in trailing if not any(s <= c.start and c.end <= e for s, e in spans)]
    return []


def _distinct(values: list[tuple[list[Any], str]]) -> list[tuple[list[Any], str]]:
    seen: dict[str, tuple[list[Any], str]] = {}
    for parsed, shown in values:
        seen.setdefault(str(parsed[0]), (parsed, shown))
    return list(seen.values())


def all_equivalent(values: list[tuple[list[Any], str]]) -> bool:
    """Whether every reading equals the first (distinct readings only; too many is a list)."""
    distinct = _distinct(values)
    if len(distinct) > MAX_CANDIDATES:
        return False
    first = distinct[0][0]
    return all(equivalent(first, parsed) for parsed, _ in distinct[1:])


@dataclass(frozen=True)
class Prediction:
    """What the span answers: ``parsed`` for verify (empty: nothing), its text for explain, and
    whether it hedges."""

    parsed: list[Any]
    text: str | None
    hedge: bool = False


def _shown(parsed: list[Any], fallback: str) -> str:
    strings = [value for value in parsed if isinstance(value, str)]
    return strings[-1] if strings else fallback


def read_prediction(span: str) -> Prediction:
    """The span's answer (module docstring): its boxes, else the whole span; hedges flagged."""
    boxes = [content for content in boxed_contents(span) if content.strip()]
    if boxes:
        if len(boxes) > MAX_MATCHES:
            return Prediction([], f"a list of {len(boxes)} boxed answers", hedge=True)
        if any(_SIDE_BY_SIDE.search(content) for content in boxes):
            return Prediction([], " | ".join(boxes), hedge=True)
        readings = [(parsed, content) for content in boxes if (parsed := _parse(f"\\boxed{{{content}}}"))]
        if not readings:
            return Prediction([], None)
        if not all_equivalent(readings):
            return Prediction([], " | ".join(shown for _, shown in _distinct(readings)), hedge=True)
        parsed, content = readings[-1]
        return Prediction(parsed, content.strip())
    if is_bare_expression(span):
        parsed = read(span)
        return Prediction(parsed, _shown(parsed, span.strip()) if parsed else None)
    try:
        found = candidates(span)
    except TooManyAnswers as exc:
        return Prediction([], f"a list of {exc}", hedge=True)
    if len(found) > 1:
        readings = [([c.value, c.text], c.text) for c in found]
        if not all_equivalent(readings):
            return Prediction([], " | ".join(shown for _, shown in _distinct(readings)), hedge=True)
    parsed = _parse(span)
    return Prediction(parsed, _shown(parsed, "") or None)


@functools.lru_cache(maxsize=GOLD_CACHE)
def parse_gold(text: str) -> tuple[Any, ...]:
    """The gold, parsed once per worker (a GRPO group shares it); nothing parsed is a client error."""
    parsed = read(text)
    if not parsed:
        raise InvalidGroundTruth(f"math ground truth has no expression math-verify can read: {preview(text)}")
    return tuple(parsed)


class Math(RewardFamily):
    name = "math"
    aliases = ("math_verify", "latex", "free_form_math")
    summary = "math equivalence: math-verify's verify(gold, answer), the boxed answer or the whole answer"
    runs = Runs.POOL
    extra = "math"

    def parse_truth(self, text: str) -> str:
        """Runs in the server: no math-verify here (it may hang); only whether it is installed."""
        missing = missing_modules()
        if missing:
            raise MissingExtra(
                f"task type math needs the optional extra [math] (math-verify with antlr4 4.9.3), which this "
                f"server lacks ({', '.join(missing)} not importable): {INSTALL_HINT}"
            )
        return text

    def warm_up(self) -> None:
        """Import math-verify and sympy and run one verification: seconds that a fresh worker's
        first item would otherwise spend inside its deadline."""
        self.score("\\boxed{\\frac{1}{2}}", "0.5", ResolvedOptions())

    def score(self, span: str, truth: str, options: ResolvedOptions) -> Score:
        gold = parse_gold(truth)
        prediction = read_prediction(span)
        if prediction.hedge or not prediction.parsed:
            return Score(0.0, parsed=prediction.text)
        correct = _math_verify().verify(list(gold), prediction.parsed, timeout_seconds=None)
        return Score(1.0 if correct else 0.0, parsed=prediction.text)
