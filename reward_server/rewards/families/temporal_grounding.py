"""``temporal_grounding`` (SPEC §13b): tIoU of time segments, in seconds.

Video grounding models write a segment in many ways: ``12.5 to 17.3``, ``from 12.5s to 17.3s``,
``12.5 - 17.3``, ``12.5–17.3``, ``[12.5, 17.3]``, ``(12.5, 17.3)``, JSON, ``00:01:05.5 to
00:01:10``, ``1:05 - 1:10 seconds``. One scanner reads them all, with any spacing (the peers'
``(\\d+\\.?\\d*) (to|and) (\\d+\\.?\\d*)`` needs exactly one space on each side of ``to``). A reversed
pair is re-ordered; a zero-length predicted segment scores 0.

One truth segment: the predicted segment's tIoU. A span that names several *different* segments
hedges between answers and scores 0 (SPEC §13: a hedge scores 0 in every family; the best of
several would reward spraying segments, and even the first of several would pay a list); the same
segment written twice (``00:10 to 00:20 (10 to 20 s)``) is one answer. Several truth segments:
every predicted segment counts, and the score is the IoU of the two unions (overlap of the unions
over the length they cover together), so both a missed moment and an extra one cost. The truth
always has positive length, so no union is ever 0 (a peer's ``iou`` is unbound there).

With ``tiou_boundary_penalty`` (Time-R1's ``iou_v2``) the tIoU is multiplied by
``(1 - |s - ŝ| / D) · (1 - |e - ê| / D)``, each factor clipped at 0 (unclipped, two factors below 0
would multiply to a positive reward). With several truth segments, ``s, e`` and ``ŝ, ê`` are the
first start and last end of each side. It needs the truth's ``duration``: ``check_options`` makes a
truth without one a 422 when a request asks for the penalty, before anything is scored.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from reward_server.rewards.errors import InvalidGroundTruth
from reward_server.rewards.family import RewardFamily, Score
from reward_server.rewards.options import ResolvedOptions
from reward_server.rewards.textnorm import preview

MAX_TRUTH_SEGMENTS = 256
# Predicted segments past this many are not read: with several truths the union only grows with
# them (their contribution cannot help past covering the video), and the work must stay bounded.
MAX_PREDICTED_SEGMENTS = 4096
TIOU, PENALTY = "tiou", "boundary_penalty"

# One time value: hh:mm:ss(.f), mm:ss(.f), or a number of seconds; then an optional unit. It must
# not start inside a word or number ("x2 to 5" is not "2 to 5") nor stop inside one ("10.5.3").
_VALUE = (
    r"(?<![\w.:])(?:(?:(?P<{p}h>\d+):)?(?P<{p}m>\d+):(?P<{p}s>\d+(?:\.\d+)?)"
    r"|(?P<{p}n>-?(?:\d+(?:\.\d*)?|\.\d+)))(?![\d:]|\.\d)(?:\s*(?:seconds?|secs?|s)\b)?"
)
_Q = r"[\"']?"  # JSON or Python strings: ["00:01:05", "00:01:10"]
_SIDES = (("a", "b"), ("c", "d"), ("e", "f"))


def _value(prefix: str) -> str:
    return _VALUE.format(p=prefix)


# A bracketed pair ([a, b], (a, b), JSON, quoted timestamps), a ranged pair (a to b, from a to b,
# a - b, a–b, a—b, a ~ b) or "between a and b". Linear: every quantifier sits between fixed
# tokens. A bare "a and b" is not a segment: it may name two moments.
_SEGMENT = re.compile(
    rf"[\[(]\s*{_Q}{_value('a')}{_Q}\s*,\s*{_Q}{_value('b')}{_Q}\s*[\])]"
    rf"|(?:\bfrom\s+)?{_value('c')}\s*(?:\bto\b|-|–|—|~)\s*{_value('d')}"
    rf"|\bbetween\s+{_value('e')}\s+and\s+{_value('f')}",
    re.IGNORECASE,
)
_ONE_VALUE = re.compile(rf"\s*{_value('x')}\s*", re.IGNORECASE)


@dataclass(frozen=True, order=True)
class Segment:
    """``start <= end``, in seconds; ordered by start, then end (the union sweep sorts them)."""

    start: float
    end: float

    @property
    def length(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class TemporalTruth:
    segments: tuple[Segment, ...]
    duration: float | None = None


def _seconds(match: re.Match[str], prefix: str) -> float | None:
    """The value of one side of a match in seconds; None for a malformed timestamp (``1:75``) or
    an overflowing number."""
    number = match.group(f"{prefix}n")
    if number is not None:
        value = float(number)
        return value if math.isfinite(value) else None
    hours, minutes, seconds = match.group(f"{prefix}h"), match.group(f"{prefix}m"), match.group(f"{prefix}s")
    if float(seconds) >= 60 or (hours is not None and int(minutes) >= 60):
        return None
    value = (int(hours) if hours is not None else 0) * 3600.0 + int(minutes) * 60.0 + float(seconds)
    return value if math.isfinite(value) else None


def parse_time(text: str) -> float | None:
    """One time value written alone (``"00:01:05.5"``, ``"65.5s"``, ``"12"``), in seconds."""
    match = _ONE_VALUE.fullmatch(text)
    return _seconds(match, "x") if match else None


def scan_segments(text: str, limit: int | None = None) -> Iterable[tuple[float | None, float | None, str]]:
    """Every pair written in ``text``, in order: (first, second, the matched text); a side is None
    when it is not a usable time (a malformed timestamp)."""
    for count, match in enumerate(_SEGMENT.finditer(text)):
        if limit is not None and count >= limit:
            return
        first, second = next(
            (a, b) for a, b in _SIDES if match.group(f"{a}n") is not None or match.group(f"{a}m") is not None
        )
        yield _seconds(match, first), _seconds(match, second), match.group(0)


def predicted_segments(text: str, limit: int | None = None) -> list[Segment | None]:
    """The response's segments in order, reversed pairs re-ordered. A pair with an unusable time
    is None: it was an attempt, so as the first segment it scores 0 (like grounding's unusable
    box). Zero-length segments are kept: as the first segment they score 0."""
    segments: list[Segment | None] = []
    for first, second, _ in scan_segments(text, limit):
        if first is None or second is None:
            segments.append(None)
        else:
            segments.append(Segment(min(first, second), max(first, second)))
    return segments


_TRUTH = "temporal ground truth"


def _truth_segment(first: Any, second: Any, shown: str) -> Segment:
    values = []
    for value in (first, second):
        if isinstance(value, str):
            value = parse_time(value)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise InvalidGroundTruth(f"{_TRUTH} segment {shown} has a value that is not a time in seconds")
        values.append(float(value))
    start, end = min(values), max(values)
    if start < 0:
        raise InvalidGroundTruth(f"{_TRUTH} segment {shown} is negative")
    if end == start:
        raise InvalidGroundTruth(f"{_TRUTH} segment {shown} has zero length")
    return Segment(start, end)


def _is_pair(value: Any) -> bool:
    """``[s, e]`` with two scalar values (their types are checked when read)."""
    return isinstance(value, list) and len(value) == 2 and not any(isinstance(v, list | dict) for v in value)


def _is_pair_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, list) for v in value)


def _segments_of(value: Any, text: str) -> list[Segment]:
    """Segments from a JSON value: [s, e] or [[s, e], ...]."""
    if _is_pair(value):
        return [_truth_segment(value[0], value[1], preview(json.dumps(value)))]
    if _is_pair_list(value):
        segments = []
        for item in value:
            if len(item) != 2:
                raise InvalidGroundTruth(
                    f"a temporal segment needs 2 values [start, end], got {len(item)}: {preview(text)}"
                )
            segments.append(_truth_segment(item[0], item[1], preview(json.dumps(item))))
        return segments
    raise InvalidGroundTruth(
        f"{_TRUTH} must be [start, end] or [[start, end], ...] in seconds: {preview(text)}"
    )


def _duration(value: Any) -> float:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not (number and math.isfinite(value) and value > 0):
        raise InvalidGroundTruth(
            f"{_TRUTH} 'duration' must be a positive number of seconds, got {preview(json.dumps(value))}"
        )
    return float(value)


def _object_truth(value: dict[Any, Any], text: str) -> TemporalTruth:
    """``{"segment": [s, e]}`` or ``{"segments": [[s, e], ...]}``, optional ``"duration"``; keys
    are case-insensitive."""
    keys = {key.lower(): key for key in value if isinstance(key, str)}
    if "segment" in keys and "segments" in keys:
        raise InvalidGroundTruth(f"{_TRUTH} has both 'segment' and 'segments'; give one")
    if "segment" in keys:
        if not _is_pair(value[keys["segment"]]):
            raise InvalidGroundTruth(f"{_TRUTH} 'segment' must be [start, end]: {preview(text)}")
        segments = _segments_of(value[keys["segment"]], text)
    elif "segments" in keys:
        if not _is_pair_list(value[keys["segments"]]):
            raise InvalidGroundTruth(f"{_TRUTH} 'segments' must be [[start, end], ...]: {preview(text)}")
        segments = _segments_of(value[keys["segments"]], text)
    else:
        raise InvalidGroundTruth(f"{_TRUTH} object needs 'segment' or 'segments': {preview(text)}")
    duration = _duration(value[keys["duration"]]) if "duration" in keys else None
    return TemporalTruth(tuple(segments), duration)


def _text_truth(text: str) -> TemporalTruth:
    segments = []
    for first, second, shown in scan_segments(text):
        if first is None or second is None:
            raise InvalidGroundTruth(f"{_TRUTH} segment {preview(shown)} has a malformed timestamp")
        segments.append(_truth_segment(first, second, preview(shown)))
    if not segments:
        raise InvalidGroundTruth(f"no segment (start to end, [start, end]) found in {_TRUTH} {preview(text)}")
    return TemporalTruth(tuple(segments))


def parse_temporal_truth(text: str) -> TemporalTruth:
    """A truth in any predicted form, or ``{"segment": [s, e]}`` / ``{"segments": [[s, e], ...]}``
    with an optional ``"duration"``. Reversed pairs are re-ordered; a malformed, negative or
    zero-length segment, or a duration that is not a positive number, is the client's to fix."""
    try:
        value: Any = json.loads(text)
    except (ValueError, RecursionError):
        value = None
    if isinstance(value, dict):
        truth = _object_truth(value, text)
    elif isinstance(value, list):
        truth = TemporalTruth(tuple(_segments_of(value, text)))
    else:
        truth = _text_truth(text)
    if len(truth.segments) > MAX_TRUTH_SEGMENTS:
        raise InvalidGroundTruth(f"{len(truth.segments)} segments in {_TRUTH}; at most {MAX_TRUTH_SEGMENTS}")
    return truth


def tiou(prediction: Segment, truth: Segment) -> float:
    """``max(0, min(e, ê) − max(s, ŝ)) / (max(e, ê) − min(s, ŝ))``; a zero-length prediction: 0."""
    if prediction.length <= 0:
        return 0.0
    overlap = min(prediction.end, truth.end) - max(prediction.start, truth.start)
    span = max(prediction.end, truth.end) - min(prediction.start, truth.start)
    return max(0.0, overlap) / span if span > 0 else 0.0


def _merged(segments: Iterable[Segment]) -> list[Segment]:
    """The union as sorted, disjoint segments (zero-length ones add nothing)."""
    merged: list[Segment] = []
    for segment in sorted(s for s in segments if s.length > 0):
        if merged and segment.start <= merged[-1].end:
            if segment.end > merged[-1].end:
                merged[-1] = Segment(merged[-1].start, segment.end)
        else:
            merged.append(segment)
    return merged


def union_iou(predictions: Iterable[Segment], truths: Iterable[Segment]) -> float:
    """Length of (∪P ∩ ∪G) over length of (∪P ∪ ∪G)."""
    first, second = _merged(predictions), _merged(truths)
    covered = sum(s.length for s in _merged([*first, *second]))
    overlap, i, j = 0.0, 0, 0
    while i < len(first) and j < len(second):  # a sweep over two sorted disjoint lists
        overlap += max(0.0, min(first[i].end, second[j].end) - max(first[i].start, second[j].start))
        if first[i].end < second[j].end:
            i += 1
        else:
            j += 1
    return min(1.0, overlap / covered) if covered > 0 else 0.0


def boundary_penalty(predictions: list[Segment], truths: tuple[Segment, ...], duration: float) -> float:
    """Time-R1's ``(1 - |s - ŝ| / D)(1 - |e - ê| / D)``, each factor clipped at 0; with several
    segments, each side's first start and last end."""
    start, end = min(s.start for s in truths), max(s.end for s in truths)
    predicted_start, predicted_end = min(s.start for s in predictions), max(s.end for s in predictions)
    at_start = max(0.0, 1.0 - abs(start - predicted_start) / duration)
    at_end = max(0.0, 1.0 - abs(end - predicted_end) / duration)
    return at_start * at_end


class TemporalGrounding(RewardFamily):
    name = "temporal_grounding"
    aliases = ("tiou", "tvg", "video_grounding", "moment")
    summary = "tIoU of time segments (several different ones against one truth: 0; IoU of the unions for several truth segments)"
    binary = False
    sub_scores = (TIOU, PENALTY)

    def parse_truth(self, text: str) -> TemporalTruth:
        return parse_temporal_truth(text)

    def check_options(self, truth: TemporalTruth, options: ResolvedOptions) -> None:
        if options.tiou_boundary_penalty and truth.duration is None:
            raise InvalidGroundTruth(
                "options.tiou_boundary_penalty needs the video's length: send the truth as "
                '{"segment": [start, end], "duration": seconds}'
            )

    def score(self, span: str, truth: TemporalTruth, options: ResolvedOptions) -> Score:
        read = predicted_segments(span, limit=MAX_PREDICTED_SEGMENTS)
        hedge = False
        if len(truth.segments) == 1:
            first = read[0] if read else None  # a broken first segment is still the answer: 0
            hedge = any(other != first for other in read[1:])  # several different segments
            predictions = [first] if first is not None else []
            value = tiou(first, truth.segments[0]) if first is not None and not hedge else 0.0
        else:
            predictions = [s for s in read if s is not None]
            value = union_iou(predictions, truth.segments)
        # ``boundary_penalty`` is the factor applied: 1 without the option, 0 with nothing to place.
        # Validation guarantees a duration whenever the option is on (check_options); a direct
        # caller without one gets the plain tIoU rather than an exception on model output.
        penalty = 1.0
        if options.tiou_boundary_penalty and truth.duration is not None:
            penalty = boundary_penalty(predictions, truth.segments, truth.duration) if predictions else 0.0
        parsed = [[s.start, s.end] for s in predictions] or None
        if hedge:
            parsed = [[s.start, s.end] if s is not None else None for s in dict.fromkeys(read)]
        return Score(value * penalty, parsed=parsed, sub_scores={TIOU: value, PENALTY: penalty})
