"""``point`` (SPEC §13e): the span's point lies inside a truth box (edges included); several
different points are a hedge.

GUI agents and pointing models write a click in many dialects: ``(x, y)``, ``[x, y]``,
``<point>x, y</point>``, ``{"point_2d": [x, y]}``, ``x=…, y=…`` (Molmo's ``<point x="…" y="…">``
too). The first one in the span is the prediction. A span naming several *different* points hedges
between clicks and scores 0 (SPEC §13: a hedge scores 0 in every family; a GUI agent clicks once),
and the same point written twice is one answer. A span holding no point but a box ``[x1, y1, x2,
y2]`` is read as the box's centre (models trained on grounding answer with a box); boxes with
different centres are a hedge too. Coordinates are compared as given: no rescaling (SPEC §5).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from reward_server.rewards.errors import InvalidGroundTruth
from reward_server.rewards.family import RewardFamily, Score
from reward_server.rewards.options import ResolvedOptions
from reward_server.rewards.shapes import Box, parse_shapes
from reward_server.rewards.textnorm import preview

MAX_TRUTH_BOXES = 256
_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_Q = r"[\"']?"  # a number may be quoted: ['12', '30'], x="12.5"
# Each form is linear: fixed structure, and no two whitespace quantifiers can share a run of spaces
# (`\s*,?\s*` would try every split of a long run).
_POINT = re.compile(
    rf"<point>\s*[\[(]?\s*(?P<tx>{_NUM})(?:\s*,\s*|\s+)(?P<ty>{_NUM})\s*[\])]?\s*</point>"
    rf"|[\[(]\s*{_Q}(?P<bx>{_NUM}){_Q}\s*,\s*{_Q}(?P<by>{_NUM}){_Q}\s*[\])]"
    rf"|\bx\s*[=:]\s*{_Q}(?P<kx>{_NUM}){_Q}(?:\s*[,;]\s*|\s*)\by\s*[=:]\s*{_Q}(?P<ky>{_NUM}){_Q}",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Point:
    x: float
    y: float


MAX_POINTS = 256  # points read from one span; a hedge shows within the first two different ones


def points_of(text: str) -> list[Point]:
    """The distinct points written in ``text``, in order (the first ``MAX_POINTS``); with none,
    the distinct centres of its boxes. A point with a non-finite coordinate (``1e999``) is no point."""
    points: dict[Point, None] = {}
    for count, match in enumerate(_POINT.finditer(text)):
        if count >= MAX_POINTS:
            break
        x, y = (value for value in match.groups() if value is not None)
        point = Point(float(x), float(y))
        if math.isfinite(point.x) and math.isfinite(point.y):
            points[point] = None
    if not points:
        for shape in parse_shapes(text, limit=MAX_POINTS):
            if isinstance(shape, Box):
                centre = Point((shape.x1 + shape.x2) / 2, (shape.y1 + shape.y2) / 2)
                if math.isfinite(centre.x) and math.isfinite(centre.y):
                    points[centre] = None
    return list(points)


def inside(point: Point, box: Box) -> bool:
    return box.x1 <= point.x <= box.x2 and box.y1 <= point.y <= box.y2


def parse_boxes(text: str) -> tuple[Box, ...]:
    """One box or a list of acceptable boxes, corners re-ordered; anything else is the client's."""
    shapes = parse_shapes(text, strict=True)
    if not shapes:
        raise InvalidGroundTruth(f"point ground truth has no box [x1, y1, x2, y2]: {preview(text)}")
    if len(shapes) > MAX_TRUTH_BOXES:
        raise InvalidGroundTruth(f"point ground truth has {len(shapes)} boxes; at most {MAX_TRUTH_BOXES}")
    boxes: list[Box] = []
    for shape in shapes:
        if not isinstance(shape, Box):
            raise InvalidGroundTruth(
                f"point ground truth must be boxes [x1, y1, x2, y2], not polygons: {preview(text)}"
            )
        if not (shape.x2 > shape.x1 and shape.y2 > shape.y1):
            corners = f"[{shape.x1:g}, {shape.y1:g}, {shape.x2:g}, {shape.y2:g}]"
            raise InvalidGroundTruth(f"point ground truth box {corners} has zero area")
        boxes.append(shape)
    return tuple(boxes)


class PointInBox(RewardFamily):
    name = "point"
    aliases = ("click", "pointing", "gui_click")
    summary = "point in box: the answer's point lies inside a truth box (edges included); several points: 0"

    def parse_truth(self, text: str) -> tuple[Box, ...]:
        return parse_boxes(text)

    def score(self, span: str, truth: tuple[Box, ...], options: ResolvedOptions) -> Score:
        points = points_of(span)
        if len(points) > 1:  # several different clicks: a hedge
            return Score(0.0, parsed=[[point.x, point.y] for point in points])
        point = points[0] if points else None
        hit = point is not None and any(inside(point, box) for box in truth)
        return Score(1.0 if hit else 0.0, parsed=[point.x, point.y] if point is not None else None)
