"""``grounding`` (SPEC §5): IoU of boxes or polygons. One truth shape: the IoU of the first
predicted shape (the best of many would reward spraying boxes). Several: the optimal one-to-one
matching's summed IoU over ``max(#pred, #gt)``, so misses and extras both cost. Labelled truths
(detection) match only predictions with the same label, under either rule."""

from __future__ import annotations

from typing import Any

from reward_server.rewards.family import RewardFamily, Score
from reward_server.rewards.grounding import grounding_reward, parse_truth_shapes
from reward_server.rewards.options import ResolvedOptions
from reward_server.rewards.shapes import Box, Polygon, Shape, parse_shapes


def shape_json(shape: Shape) -> list[float] | list[list[float]] | dict[str, Any] | None:
    """A shape as the JSON a response would write (``parsed`` of options.explain): its coordinates,
    or ``{"bbox_2d" | "polygon": coordinates, "label": label}`` when it carries a label."""
    if isinstance(shape, Box):
        coordinates: list[Any] = [shape.x1, shape.y1, shape.x2, shape.y2]
        key = "bbox_2d"
    elif isinstance(shape, Polygon):
        coordinates = [list(point) for point in shape.points]
        key = "polygon"
    else:
        return None
    return coordinates if shape.label is None else {key: coordinates, "label": shape.label}


class Grounding(RewardFamily):
    name = "grounding"
    aliases = ("iou", "rec", "bbox", "detection")
    summary = "IoU of boxes / polygons (one-to-one matching for several)"
    binary = False

    def parse_truth(self, text: str) -> tuple[Shape, ...]:
        return parse_truth_shapes(text)

    def score(self, span: str, truth: tuple[Shape, ...], options: ResolvedOptions) -> Score:
        accuracy = grounding_reward(span, truth)
        parsed = None
        if options.explain:
            shapes = parse_shapes(span, limit=1 if len(truth) == 1 else None)
            parsed = [shape_json(shape) for shape in shapes]
        return Score(accuracy, parsed=parsed)
