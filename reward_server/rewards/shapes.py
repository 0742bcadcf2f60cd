"""Reading boxes and polygons out of text (SPEC §5): JSON first, a tolerant scanner second.

Grounding answers come in many dialects: ``[10, 20, 30, 40]``, ``[[...], [...]]``,
``[{"bbox_2d": [...], "label": "cat"}]``, ``{"bbox": [...]}``, ``(10,20),(30,40)``, Python reprs,
code fences, prose around all of these. JSON is tried first because it is exact (keys tell a box
from a label or an image size); anything else goes through a one-pass bracket scanner.

A JSON object's ``"label"`` (detection: ``[{"bbox_2d": [...], "label": "dog"}]``) is kept on the
shapes it holds, case and surrounding whitespace folded; labels written outside JSON are not read.

The same reader serves both sides with one switch. For a response (``strict=False``) anything
unreadable is skipped and a box-shaped thing with bad numbers becomes an :class:`Unusable` shape
that scores 0 (an attempted box still counts as a prediction). For a ground truth (``strict=True``)
the same findings raise :class:`InvalidGroundTruth` with a message that says what is wrong.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from reward_server.rewards.errors import InvalidGroundTruth

MAX_DEPTH = 32  # deeper nesting is not a shape list; also keeps recursion far from Python's limit
SHAPE_KEYS = ("bbox_2d", "bbox", "box_2d", "box", "bounding_box", "polygon", "points", "coordinates")
LABEL_KEY = "label"


@dataclass(frozen=True)
class Box:
    """An axis-aligned box with ``x1 <= x2`` and ``y1 <= y2`` (corners given swapped are reordered).

    ``label`` (folded, or None) is not part of equality or hashing: two boxes are the same shape
    whatever they are called, so geometry caches and shape comparisons ignore it; only the
    detection matching reads it."""

    x1: float
    y1: float
    x2: float
    y2: float
    label: str | None = field(default=None, compare=False)

    @classmethod
    def from_corners(cls, xa: float, ya: float, xb: float, yb: float, label: str | None = None) -> Box:
        if xa > xb:
            xa, xb = xb, xa
        if ya > yb:
            ya, yb = yb, ya
        return cls(xa, ya, xb, yb, label)

    @property
    def area(self) -> float:
        return (self.x2 - self.x1) * (self.y2 - self.y1)


@dataclass(frozen=True)
class Polygon:
    """A polygon given as >= 3 points; validity is the geometry module's concern."""

    points: tuple[tuple[float, float], ...]
    label: str | None = field(default=None, compare=False)  # as Box.label


@dataclass(frozen=True)
class Unusable:
    """A predicted shape that was attempted but cannot be scored (NaN, text, overflow): IoU 0."""

    reason: str


Shape = Box | Polygon | Unusable


# ------------------------------------------------------------------------------------- scanner

# Brackets and numbers are all the scanner needs. A number glued to a word ("x1", "bbox_2d") is
# part of that word, hence the look-behind. NaN / inf are kept (as non-finite floats) so that
# "[1, NaN, 3, 4]" is recognised as a broken box rather than silently read as "[1, 3, 4]".
_TOKEN = re.compile(
    r"[\[({]|[\])}]"
    r"|(?<!\w)[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
    r"|(?<!\w)[-+]?(?:[nN][aA][nN]|[iI][nN][fF](?:[iI][nN][iI][tT][yY])?)(?!\w)"
)
_OPENERS = frozenset("[({")
_CLOSERS = frozenset("])}")
_FENCE = "```"


def _scan(text: str) -> list[Any]:
    """Bracket structure of free text as nested lists of floats; words and punctuation dropped.

    Unclosed groups are closed at the end (a truncated ``[10, 20, 30, 40`` is still a box) and
    stray closers are ignored. Groups nested deeper than ``MAX_DEPTH`` are discarded wholesale.
    """
    root: list[Any] = []
    stack: list[list[Any]] = [root]
    current = root
    overflow = 0
    for token in _TOKEN.findall(text):
        if token in _OPENERS:
            if overflow or len(stack) > MAX_DEPTH:
                overflow += 1
            else:
                group: list[Any] = []
                current.append(group)
                stack.append(group)
                current = group
        elif token in _CLOSERS:
            if overflow:
                overflow -= 1
            elif len(stack) > 1:
                stack.pop()
                current = stack[-1]
        elif not overflow:
            current.append(_float(token))
    return root


def _float(literal: str) -> float:
    try:
        return float(literal)
    except (ValueError, OverflowError):
        return math.nan


def _strip_fence(text: str) -> str:
    """Content of the first ```` ``` ```` code fence, language tag dropped; else the text itself."""
    start = text.find(_FENCE)
    if start < 0:
        return text
    end = text.find(_FENCE, start + len(_FENCE))
    if end < 0:
        return text
    body = text[start + len(_FENCE) : end]
    newline = body.find("\n")
    if newline >= 0 and body[:newline].strip().isidentifier():
        body = body[newline + 1 :]
    return body


def _json(text: str) -> tuple[bool, Any]:
    try:
        return True, json.loads(text)
    except (ValueError, RecursionError):
        return False, None


# -------------------------------------------------------------------------------------- walker


def _coordinate(value: Any) -> float | None:
    """A finite coordinate, or None: bools are not numbers; numeric strings are accepted."""
    if type(value) is float:  # the scanner's output and most JSON: the hot path
        return value if math.isfinite(value) else None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except (ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


_CONTAINERS = (list, dict)


def _is_point(value: list[Any]) -> bool:
    return len(value) == 2 and type(value[0]) not in _CONTAINERS and type(value[1]) not in _CONTAINERS


def _finite_coordinates(values: list[Any]) -> list[float] | None:
    """All values as finite floats, or None. Scanner output (all floats) takes a C-speed path."""
    if all(type(v) is float for v in values) and math.isfinite(sum(values)):
        return values  # a NaN or inf anywhere makes the sum non-finite
    coords = [_coordinate(v) for v in values]
    if any(c is None for c in coords):
        return None
    return [float(c) for c in coords if c is not None]


class _Enough(Exception):
    """Raised inside the walk once ``limit`` shapes are found: the rest need not be visited."""


class _Walker:
    """Collects shapes from a parsed structure; ``strict`` turns every oddity into an error."""

    def __init__(self, strict: bool, scanned: bool, limit: int | None = None) -> None:
        self.strict = strict
        self.scanned = scanned
        self.limit = limit
        self.shapes: list[Shape] = []

    def add(self, shape: Shape) -> None:
        self.shapes.append(shape)
        if self.limit is not None and len(self.shapes) >= self.limit:
            raise _Enough

    def fail(self, message: str) -> None:
        if self.strict:
            raise InvalidGroundTruth(message)

    def walk(self, node: Any, depth: int = 0, label: str | None = None) -> None:
        if depth > MAX_DEPTH:
            self.fail(f"ground truth nests deeper than {MAX_DEPTH} levels")
            return
        if type(node) is dict:
            self.walk_dict(node, depth)
        elif type(node) is list:
            self.walk_list(node, depth, label)

    def walk_dict(self, node: dict[Any, Any], depth: int) -> None:
        keyed = [value for key, value in node.items() if isinstance(key, str) and key.lower() in SHAPE_KEYS]
        # A label names the shapes of its own object only; an object without a shape key is a
        # container ({"objects": [...]}) whose label, if any, names nothing we score.
        label = self.label_of(node) if keyed else None
        for value in keyed or node.values():
            if type(value) in _CONTAINERS:
                self.walk(value, depth + 1, label)
            elif keyed:
                self.fail(f"box value {_shorten(value)!r} is not a list of coordinates")

    def label_of(self, node: dict[Any, Any]) -> str | None:
        """The object's folded label: strings (and integer class ids) are labels; an empty one is
        none; anything else is a truth error and no label in a response."""
        for key, value in node.items():
            if isinstance(key, str) and key.lower() == LABEL_KEY:
                if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
                    return fold_label(str(value))
                self.fail(f"label {_shorten(value)} is not a string")
                return None
        return None

    def walk_list(self, node: list[Any], depth: int, label: str | None = None) -> None:
        if not node:
            return
        kinds = set(map(type, node))
        if list not in kinds and dict not in kinds:
            self.flat(node, label)
        elif kinds == {list} and len(node) >= 2 and all(map(_is_point, node)):
            self.points(node, label)
        else:
            for child in node:
                if type(child) in _CONTAINERS:
                    self.walk(child, depth + 1, label)

    def flat(self, values: list[Any], label: str | None = None) -> None:
        if len(values) == 2 or (self.scanned and len(values) == 1):
            return  # a lone point, or a number in parentheses in prose: not a shape
        if len(values) != 4:
            self.fail(f"a box needs 4 numbers [x1, y1, x2, y2], got {len(values)}: {_shorten(values)}")
            return
        coords = _finite_coordinates(values)
        if coords is None:
            self.fail(f"box {_shorten(values)} has a non-numeric, NaN or infinite coordinate")
            self.add(Unusable("non-finite or non-numeric coordinate"))
            return
        self.add(Box.from_corners(*coords, label=label))

    def points(self, values: list[list[Any]], label: str | None = None) -> None:
        flat = _finite_coordinates([c for point in values for c in point])
        if flat is None:
            self.fail(f"polygon {_shorten(values)} has a non-numeric, NaN or infinite coordinate")
            self.add(Unusable("non-finite or non-numeric point"))
            return
        if len(values) == 2:  # [[x1, y1], [x2, y2]]: two corners
            self.add(Box.from_corners(*flat, label=label))
        else:
            self.add(Polygon(tuple(zip(flat[0::2], flat[1::2])), label))


def fold_label(text: str) -> str | None:
    """A label as compared (SPEC §5): case and surrounding whitespace folded; empty is no label."""
    folded = text.strip().casefold()
    return folded or None


def _shorten(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _structure(text: str) -> tuple[Any, bool]:
    """The text as a parsed structure, and whether it came from the scanner rather than JSON."""
    body = _strip_fence(text).strip()
    ok, node = _json(body)
    if ok and isinstance(node, str):  # a JSON-encoded string of JSON: unwrap once
        body = node.strip()
        ok, node = _json(body)
    if ok:
        return node, False
    root = _scan(body)
    groups = [item for item in root if isinstance(item, list)]
    if not groups and len(root) == 4:
        return root, True  # "10, 20, 30, 40" or "x1=10 y1=20 x2=30 y2=40"
    return groups, True


def parse_shapes(text: str, *, strict: bool = False, limit: int | None = None) -> list[Shape]:
    """Every box / polygon in ``text``, in the order written (only the first ``limit`` if given).

    With ``strict`` (ground truths) a malformed shape raises :class:`InvalidGroundTruth`; finding no
    shape at all is left to the caller, which knows what the text was.
    """
    node, scanned = _structure(text)
    walker = _Walker(strict=strict, scanned=scanned, limit=limit)
    try:
        walker.walk(node)
    except _Enough:
        pass
    return walker.shapes


__all__ = [
    "LABEL_KEY", "MAX_DEPTH", "SHAPE_KEYS", "Box", "Polygon", "Shape", "Unusable", "fold_label",
    "parse_shapes",
]
