"""Grounding reward (SPEC §5): continuous IoU in [0, 1] between predicted and true shapes.

With one truth shape only the *first* prediction counts: taking the best of many would reward
spraying boxes. With several, predictions and truths are matched one-to-one to maximise summed IoU
and the sum is divided by ``max(#pred, #gt)``, so both a missed object and an extra box cost.
Plain continuous IoU (no +1 pixel convention): coordinates are often normalised floats.

Detection: a truth shape that carries a label (``{"bbox_2d": [...], "label": "dog"}``) can only be
matched by a predicted shape with the same label (folded); a prediction without a label matches no
labelled truth, so a policy cannot skip naming what it found. Unlabelled truths match any
prediction, as before. Misses and extras still cost through ``max(#pred, #gt)``.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import shapely
from scipy.optimize import linear_sum_assignment
from shapely.errors import GEOSException
from shapely.geometry.base import BaseGeometry

from reward_server.rewards.errors import InvalidGroundTruth
from reward_server.rewards.shapes import Box, Polygon, Shape, Unusable, parse_shapes

MAX_TRUTH_SHAPES = 256
# Polygon cost limits. Validity checks go quadratic on degenerate (overlapping) rings and repair
# goes quadratic in the number of crossings, so predictions beyond these sizes score 0 instead of
# stalling the server; a truth is checked once and cached, so it may be larger.
MAX_POLYGON_POINTS = 4096
MAX_REPAIR_POINTS = 64
MAX_TRUTH_POLYGON_POINTS = 16384
MAX_TRUTH_REPAIR_POINTS = 1024
# Predictions past this many are still counted in max(#pred, #gt) but not matched: their best
# possible contribution is already below #gt / #pred, and matching cost must stay bounded.
MAX_MATCHED_PREDICTIONS = 256


def _clamp_unit(value: float) -> float:
    if not math.isfinite(value) or value <= 0.0:
        return 0.0
    return min(value, 1.0)


def box_iou(a: Box, b: Box) -> float:
    """IoU of two ordered boxes; a zero-area or overflowing box scores 0 instead of NaN."""
    width = min(a.x2, b.x2) - max(a.x1, b.x1)
    height = min(a.y2, b.y2) - max(a.y1, b.y1)
    if not (width > 0 and height > 0):
        return 0.0
    intersection = width * height
    union = a.area + b.area - intersection
    if not (math.isfinite(union) and union > 0):
        return 0.0
    return _clamp_unit(intersection / union)


def _polygonal(geometry: BaseGeometry) -> BaseGeometry:
    """Keep only areal parts: a repaired polygon may come back with stray lines or points."""
    parts = [p for p in shapely.get_parts(geometry) if p.geom_type in ("Polygon", "MultiPolygon")]
    return shapely.union_all(parts) if parts else shapely.Polygon()


def geometry_of(
    shape: Box | Polygon,
    repair_limit: int = MAX_REPAIR_POINTS,
    vertex_limit: int = MAX_POLYGON_POINTS,
) -> BaseGeometry | None:
    """A valid shapely geometry, or None when the polygon is too big or too tangled to use.

    Self-intersecting polygons are repaired with ``make_valid(method="structure")`` (a bow-tie
    keeps both lobes), but only up to ``repair_limit`` vertices: repair cost grows with the number
    of crossings, which a garbage polygon makes quadratic.
    """
    if isinstance(shape, Box):
        return shapely.box(shape.x1, shape.y1, shape.x2, shape.y2)
    if len(shape.points) > vertex_limit:
        return None
    try:
        polygon = shapely.Polygon(shape.points)
        if polygon.is_valid:
            return polygon
        if len(shape.points) > repair_limit:
            return None
        return _polygonal(shapely.make_valid(polygon, method="structure", keep_collapsed=False))
    except (GEOSException, ValueError):
        return None


@functools.lru_cache(maxsize=1024)
def truth_geometry(shape: Box | Polygon) -> BaseGeometry | None:
    """Truth geometries are cached: a GRPO group reuses one truth, and shapes are immutable."""
    return geometry_of(shape, MAX_TRUTH_REPAIR_POINTS, MAX_TRUTH_POLYGON_POINTS)


def _geometry_iou(first: BaseGeometry | None, second: BaseGeometry | None) -> float:
    if first is None or second is None:
        return 0.0
    try:
        intersection = first.intersection(second).area
        union = first.area + second.area - intersection
    except (GEOSException, ValueError):
        return 0.0
    if not (math.isfinite(union) and union > 0):
        return 0.0
    return _clamp_unit(intersection / union)


class _Prediction:
    """A predicted shape with its geometry built at most once, however many truths it meets."""

    def __init__(self, shape: Shape) -> None:
        self.shape = shape
        self._geometry: BaseGeometry | None = None
        self._built = False

    def geometry(self) -> BaseGeometry | None:
        if not self._built:
            self._built = True
            if not isinstance(self.shape, Unusable):
                self._geometry = geometry_of(self.shape)
        return self._geometry

    def iou(self, truth: Shape) -> float:
        if isinstance(self.shape, Unusable) or isinstance(truth, Unusable):
            return 0.0
        if not labels_agree(self.shape, truth):
            return 0.0
        if isinstance(self.shape, Box) and isinstance(truth, Box):
            return box_iou(self.shape, truth)
        return _geometry_iou(self.geometry(), truth_geometry(truth))


def labels_agree(prediction: Box | Polygon, truth: Box | Polygon) -> bool:
    """A labelled truth takes only a prediction with the same (folded) label; an unlabelled truth
    takes any."""
    return truth.label is None or prediction.label == truth.label


def polygon_iou(prediction: Box | Polygon, truth: Box | Polygon) -> float:
    """IoU through shapely, for any pair involving a polygon; geometry errors score 0."""
    return _geometry_iou(geometry_of(prediction), truth_geometry(truth))


def shape_iou(prediction: Shape, truth: Shape) -> float:
    """IoU of any two shapes; an unusable prediction, or one whose label a labelled truth does not
    accept, scores 0."""
    return _Prediction(prediction).iou(truth)


def _check_truth_shape(shape: Shape) -> None:
    if isinstance(shape, Box):
        area = shape.area
        if not math.isfinite(area):
            raise InvalidGroundTruth(f"box {_describe(shape)} is too large: its area is not finite")
        if area <= 0:
            raise InvalidGroundTruth(f"box {_describe(shape)} has zero area")
    elif isinstance(shape, Polygon):
        geometry = truth_geometry(shape)
        if len(shape.points) > MAX_TRUTH_POLYGON_POINTS:
            raise InvalidGroundTruth(
                f"polygon with {len(shape.points)} points; at most {MAX_TRUTH_POLYGON_POINTS} are accepted"
            )
        if geometry is None:
            raise InvalidGroundTruth(
                f"polygon with {len(shape.points)} points is self-intersecting and too large to repair "
                f"(at most {MAX_TRUTH_REPAIR_POINTS} points); send a valid polygon"
            )
        if not (math.isfinite(geometry.area) and geometry.area > 0):
            raise InvalidGroundTruth(f"polygon with {len(shape.points)} points has zero area")
    else:
        raise InvalidGroundTruth(f"unusable shape in ground truth: {shape.reason}")


def _describe(box: Box) -> str:
    return f"[{box.x1:g}, {box.y1:g}, {box.x2:g}, {box.y2:g}]"


def parse_truth_shapes(text: str) -> tuple[Shape, ...]:
    """A ground truth's shapes, every one checked; anything unscoreable is the client's to fix."""
    shapes = parse_shapes(text, strict=True)
    if not shapes:
        preview = text if len(text) <= 60 else text[:57] + "..."
        raise InvalidGroundTruth(
            f"no box [x1, y1, x2, y2] or polygon [[x, y], ...] found in ground truth {preview!r}"
        )
    if len(shapes) > MAX_TRUTH_SHAPES:
        raise InvalidGroundTruth(f"{len(shapes)} shapes in ground truth; at most {MAX_TRUTH_SHAPES}")
    for shape in shapes:
        _check_truth_shape(shape)
    return tuple(shapes)


def match_score(predictions: list[Shape], truths: tuple[Shape, ...]) -> float:
    """Optimal one-to-one summed IoU over ``max(#pred, #gt)``."""
    if not predictions or not truths:
        return 0.0
    considered = [_Prediction(p) for p in predictions[:MAX_MATCHED_PREDICTIONS]]
    weights = np.array([[p.iou(t) for t in truths] for p in considered], dtype=np.float64)
    rows, cols = linear_sum_assignment(weights, maximize=True)  # the optimal one-to-one matching
    total = float(weights[rows, cols].sum())
    return _clamp_unit(total / max(len(predictions), len(truths)))


def grounding_reward(span: str, truths: tuple[Shape, ...]) -> float:
    """The IoU reward of a response's answer span against already-validated truth shapes."""
    if not truths:
        return 0.0
    if len(truths) == 1:
        first = parse_shapes(span, limit=1)
        return shape_iou(first[0], truths[0]) if first else 0.0
    return match_score(parse_shapes(span), truths)


__all__ = [
    "MAX_MATCHED_PREDICTIONS",
    "MAX_POLYGON_POINTS",
    "MAX_REPAIR_POINTS",
    "MAX_TRUTH_POLYGON_POINTS",
    "MAX_TRUTH_REPAIR_POINTS",
    "MAX_TRUTH_SHAPES",
    "box_iou",
    "geometry_of",
    "grounding_reward",
    "match_score",
    "parse_truth_shapes",
    "polygon_iou",
    "shape_iou",
    "truth_geometry",
]
