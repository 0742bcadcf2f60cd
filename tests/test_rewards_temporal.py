"""Temporal grounding (SPEC §13b): segment forms, tIoU, the union IoU, the boundary penalty and its
validation (a 422 when a request asks for the penalty on a truth without a duration)."""

from __future__ import annotations

import json

import httpx
import pytest

from reward_server.errors import InvalidItem
from reward_server.items.models import RequestItem
from reward_server.items.settings import Settings
from reward_server.items.validation import build_items
from reward_server.rewards.errors import InvalidGroundTruth
from reward_server.rewards.families.temporal_grounding import (
    Segment,
    TemporalGrounding,
    TemporalTruth,
    parse_temporal_truth,
    predicted_segments,
    tiou,
    union_iou,
)
from reward_server.rewards.options import ResolvedOptions

FAMILY = TemporalGrounding()
PLAIN = ResolvedOptions()
PENALTY = ResolvedOptions(tiou_boundary_penalty=True)


def score(span: str, truth: str, options: ResolvedOptions = PLAIN) -> float:
    return FAMILY.score(span, FAMILY.parse_truth(truth), options).accuracy


# --------------------------------------------------------------------------------- reading segments


@pytest.mark.parametrize(
    ("span", "segment"),
    [
        ("12.5 to 17.3", (12.5, 17.3)),
        ("12.5to17.3", None),  # no word boundary around "to": not a segment
        ("12.5  to   17.3", (12.5, 17.3)),  # any spacing (the peers' regex needs exactly one space)
        ("12.5\nto\n17.3", (12.5, 17.3)),
        ("from 12.5 to 17.3", (12.5, 17.3)),
        ("From 12 To 17", (12, 17)),
        ("12.5 - 17.3", (12.5, 17.3)),
        ("12.5-17.3", (12.5, 17.3)),
        ("12.5–17.3", (12.5, 17.3)),  # en dash
        ("12.5 — 17.3", (12.5, 17.3)),  # em dash
        ("12.5 ~ 17.3", (12.5, 17.3)),
        ("[12.5, 17.3]", (12.5, 17.3)),
        ("(12.5, 17.3)", (12.5, 17.3)),
        ("[12.5,17.3]", (12.5, 17.3)),
        ('{"segment": [12.5, 17.3]}', (12.5, 17.3)),  # JSON
        ('["00:00:12.5", "00:00:17.3"]', (12.5, 17.3)),  # JSON strings of timestamps
        ("12.5s to 17.3s", (12.5, 17.3)),
        ("12.5 s - 17.3 s", (12.5, 17.3)),
        ("12.5 sec to 17.3 sec", (12.5, 17.3)),
        ("12 seconds to 17 seconds.", (12, 17)),
        ("from 5 secs to 1 second", (1, 5)),  # reversed: re-ordered
        ("00:01:05.5 to 00:01:10", (65.5, 70)),  # hh:mm:ss(.f)
        ("01:05 - 01:10", (65, 70)),  # mm:ss
        ("1:05.5 to 1:10.25", (65.5, 70.25)),  # mm:ss.f
        ("1:00:00 to 1:00:30", (3600, 3630)),
        ("17.3 to 12.5", (12.5, 17.3)),  # reversed pair
        ("The event happens between 3.2 and 8 seconds.", (3.2, 8)),
        ("The action starts at 12.5 and ends at 17.3", None),  # no pair written as one
        ("at 12.5 and 17.3", None),  # "a and b" may name two moments
        ("v2 to 5", None),  # the first value glued to a word
        ("no time", None),
    ],
)
def test_first_segment(span: str, segment: tuple[float, float] | None) -> None:
    read = predicted_segments(span)
    if segment is None:
        assert read == []
    else:
        assert read[0] == Segment(*map(float, segment))


def test_several_segments_in_order() -> None:
    assert predicted_segments("[[1, 2], [5, 8]] and 10 to 12") == [Segment(1, 2), Segment(5, 8), Segment(10, 12)]
    assert predicted_segments("1:75 to 2:00, then 3 to 4") == [None, Segment(3, 4)]  # a malformed timestamp


# --------------------------------------------------------------------------------------- the reward

ONE = "[10, 20]"


@pytest.mark.parametrize(
    ("span", "expected"),
    [
        ("10 to 20", 1.0),
        ("20 to 10", 1.0),
        ("15 to 25", 5 / 15),  # overlap 5, hull 15
        ("10 to 15", 0.5),
        ("0 to 100", 10 / 100),  # the whole video
        ("30 to 40", 0.0),
        ("20 to 30", 0.0),  # touching: no overlap
        ("12 to 12", 0.0),  # zero length: 0 (never a division by zero)
        ("30 to 40, 10 to 20", 0.0),  # several different segments: a hedge
        ("10 to 20, 30 to 40", 0.0),  # ... whichever comes first
        ("10 to 20 or 30 to 40", 0.0),
        ("00:10 to 00:20 (10 to 20 seconds)", 1.0),  # the same segment twice: one answer
        ("1:75 to 2:00, 10 to 20", 0.0),  # a broken first segment is still the first
        ("", 0.0),
        ("nothing", 0.0),
    ],
)
def test_one_truth_segment(span: str, expected: float) -> None:
    assert score(span, ONE) == pytest.approx(expected)


def test_tiou_formula_and_zero_length() -> None:
    assert tiou(Segment(2, 6), Segment(4, 10)) == pytest.approx(2 / 8)
    assert tiou(Segment(5, 5), Segment(5, 5.5)) == 0.0


TWO = '{"segments": [[0, 10], [20, 30]]}'


@pytest.mark.parametrize(
    ("span", "expected"),
    [
        ("[[0, 10], [20, 30]]", 1.0),
        ("[[20, 30], [0, 10]]", 1.0),
        ("0 to 10", 0.5),  # one miss: overlap 10 over 20 covered
        ("0 to 30", 20 / 30),  # one segment over both: the gap is an extra
        ("[[0, 10], [20, 30], [40, 50]]", 20 / 30),  # an extra moment costs
        ("[[0, 5], [5, 10], [20, 30]]", 1.0),  # adjacent predictions merge
        ("[[0, 10], [0, 10], [20, 30]]", 1.0),  # duplicates add no length
        ("[[5, 15], [25, 35]]", 10 / 30),  # overlap 5 + 5 over covered 15 + 15
        ("nothing", 0.0),
    ],
)
def test_several_truth_segments_use_the_union_iou(span: str, expected: float) -> None:
    assert score(span, TWO) == pytest.approx(expected)


def test_union_iou_with_overlapping_truths() -> None:
    assert union_iou([Segment(0, 15)], [Segment(0, 10), Segment(5, 15)]) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("span", "expected"),
    [
        ("10 to 20", 1.0),
        # tIoU 10/15; starts agree, ends differ by 5 of D = 100: (1 - 0)(1 - 0.05)
        ("10 to 25", (10 / 15) * 0.95),
        ("5 to 20", (10 / 15) * 0.95),
        ("0 to 100", 0.1 * (1 - 0.1) * (1 - 0.8)),  # the whole video pays almost nothing
        ("30 to 40", 0.0),
    ],
)
def test_boundary_penalty(span: str, expected: float) -> None:
    truth = '{"segment": [10, 20], "duration": 100}'
    assert score(span, truth, PENALTY) == pytest.approx(expected)
    assert score(span, truth, PLAIN) == pytest.approx(score(span, ONE))  # off: plain tIoU


def test_boundary_penalty_factors_are_clipped_at_zero() -> None:
    # D = 10 and a prediction far past both ends: unclipped, the two negative factors would
    # multiply to a positive penalty (1 - 25/10)(1 - 25/10) = 2.25.
    truth = TemporalTruth((Segment(0, 5),), duration=10.0)
    result = FAMILY.score("0 to 30", truth, PENALTY)
    assert result.sub_scores == {"tiou": pytest.approx(5 / 30), "boundary_penalty": 0.0}
    assert result.accuracy == 0.0


def test_sub_scores_are_stable() -> None:
    truth = parse_temporal_truth('{"segment": [10, 20], "duration": 100}')
    assert FAMILY.score("10 to 25", truth, PLAIN).sub_scores == {"tiou": pytest.approx(10 / 15), "boundary_penalty": 1.0}
    assert FAMILY.score("10 to 25", truth, PENALTY).sub_scores == {
        "tiou": pytest.approx(10 / 15), "boundary_penalty": pytest.approx(0.95)
    }
    assert FAMILY.score("nothing", truth, PENALTY).sub_scores == {"tiou": 0.0, "boundary_penalty": 0.0}


def test_several_truths_penalty_uses_each_sides_extent() -> None:
    truth = '{"segments": [[0, 10], [20, 30]], "duration": 100}'
    # union IoU 1; predictions span 0..30 like the truths: no penalty
    assert score("[[0, 10], [20, 30]]", truth, PENALTY) == pytest.approx(1.0)
    # union IoU 20/30; extents 0..30 both: no penalty either
    assert score("0 to 30", truth, PENALTY) == pytest.approx(20 / 30)
    assert score("[[0, 10], [20, 40]]", truth, PENALTY) == pytest.approx((20 / 30) * 0.9)


# ----------------------------------------------------------------------------------- ground truths


@pytest.mark.parametrize(
    ("text", "segments", "duration"),
    [
        ("10 to 20", [(10, 20)], None),
        ("20 to 10", [(10, 20)], None),  # reversed: re-ordered
        ("[10, 20]", [(10, 20)], None),
        ("00:00:10 - 00:00:20", [(10, 20)], None),
        ('{"segment": [10, 20]}', [(10, 20)], None),
        ('{"segment": [20, 10], "duration": 95.5}', [(10, 20)], 95.5),
        ('{"segments": [[0, 5], [10, 20]], "duration": 30}', [(0, 5), (10, 20)], 30.0),
        ('{"Segment": ["00:10", "00:20"]}', [(10, 20)], None),
        ("[[0, 5], [10, 20]]", [(0, 5), (10, 20)], None),
        ("0 to 5 and 10 to 20", [(0, 5), (10, 20)], None),
    ],
)
def test_truth_forms(text: str, segments: list[tuple[float, float]], duration: float | None) -> None:
    truth = parse_temporal_truth(text)
    assert truth.segments == tuple(Segment(*map(float, s)) for s in segments)
    assert truth.duration == duration


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("5 to 5", "zero length"),
        ("[5, 5]", "zero length"),
        ("-1 to 5", "negative"),
        ('{"segment": [-3, 4]}', "negative"),
        ("no time here", "no segment"),
        ("[1, 2, 3]", "[start, end]"),
        ("[]", "[start, end]"),
        ('{"segment": [1]}', "'segment' must be"),
        ('{"segments": [[1, 2, 3]]}', "2 values"),
        ('{"segments": []}', "'segments' must be"),
        ('{"start": 1, "end": 2}', "needs 'segment'"),
        ('{"segment": [1, 2], "duration": 0}', "duration"),
        ('{"segment": [1, 2], "duration": "long"}', "duration"),
        ('{"segment": [true, 2]}', "not a time"),
        ('{"segment": ["soon", 2]}', "not a time"),
        ("1:75 to 2:00", "malformed timestamp"),
        ('{"segment": [1, 2], "segments": [[1, 2]]}', "both"),
    ],
)
def test_malformed_truths(text: str, fragment: str) -> None:
    with pytest.raises(InvalidGroundTruth) as info:
        parse_temporal_truth(text)
    assert fragment in info.value.message and info.value.field == "ground_truth"


# ------------------------------------------------------------------------ validation of the option


def test_check_options_needs_a_duration_only_with_the_penalty() -> None:
    truth = parse_temporal_truth("[10, 20]")
    FAMILY.check_options(truth, PLAIN)  # fine without the option
    with pytest.raises(InvalidGroundTruth, match="duration"):
        FAMILY.check_options(truth, PENALTY)
    FAMILY.check_options(parse_temporal_truth('{"segment": [10, 20], "duration": 60}'), PENALTY)


def test_build_items_reports_each_item_without_a_duration() -> None:
    items = [
        RequestItem(response="10 to 20", ground_truth={"segment": [10, 20], "duration": 60}, task_type="tvg"),
        RequestItem(response="10 to 20", ground_truth=[10, 20], task_type="moment", id="no-duration"),
        RequestItem(response="yes", ground_truth="yes", task_type="yes_no"),
    ]
    assert len(build_items(items, PLAIN, Settings())) == 3
    with pytest.raises(InvalidItem) as info:
        build_items(items, PENALTY, Settings())
    (detail,) = info.value.details
    assert (detail["item"], detail["id"], detail["field"]) == (1, "no-duration", "ground_truth")
    assert "duration" in detail["message"] and "task_type temporal_grounding" in detail["message"]


# --------------------------------------------------------------------------------------- the server


def test_through_the_server(server) -> None:
    truth = {"segment": [10, 20], "duration": 100}
    items = [
        {"response": "<think>t</think><answer>from 00:00:10 to 00:00:25</answer>", "ground_truth": truth,
         "task_type": "video_grounding"},
        {"response": "<answer>0 to 100</answer>", "ground_truth": json.dumps(truth), "task_type": "tiou"},
    ]
    plain = httpx.post(server.url + "/score", json={"items": items}, timeout=60)
    assert plain.status_code == 200, plain.text
    first, second = plain.json()["results"]
    assert first["task_type"] == "temporal_grounding"
    assert first["accuracy"] == pytest.approx(10 / 15) and first["reward"] == pytest.approx(10 / 15 + 1)
    assert (first["tiou"], first["boundary_penalty"]) == (pytest.approx(10 / 15), 1.0)
    assert second["accuracy"] == pytest.approx(0.1)
    penalised = httpx.post(
        server.url + "/score", json={"items": items, "options": {"tiou_boundary_penalty": True, "explain": True}}, timeout=60
    )
    assert penalised.status_code == 200, penalised.text
    first, second = penalised.json()["results"]
    assert first["accuracy"] == pytest.approx(10 / 15 * 0.95) and first["parsed"] == [[10, 25]]
    assert second["accuracy"] == pytest.approx(0.1 * 0.9 * 0.2)


def test_penalty_without_a_duration_is_a_422_naming_the_item(server) -> None:
    items = [
        {"response": "<answer>10 to 20</answer>", "ground_truth": {"segment": [10, 20], "duration": 50}, "task_type": "tvg"},
        {"response": "<answer>10 to 20</answer>", "ground_truth": "10 to 20", "task_type": "tvg", "id": "v2"},
    ]
    r = httpx.post(server.url + "/score", json={"items": items, "options": {"tiou_boundary_penalty": True}}, timeout=60)
    assert r.status_code == 422, r.text
    (detail,) = r.json()["error"]["details"]
    assert (detail["item"], detail["id"], detail["field"]) == (1, "v2", "ground_truth")
    assert "duration" in detail["message"]


def test_bad_truth_is_a_422_naming_the_item(server) -> None:
    items = [{"response": "<answer>1 to 2</answer>", "ground_truth": [7, 7], "task_type": "temporal_grounding"}]
    r = httpx.post(server.url + "/score", json={"items": items}, timeout=60)
    assert r.status_code == 422, r.text
    (detail,) = r.json()["error"]["details"]
    assert (detail["item"], detail["field"]) == (0, "ground_truth") and "zero length" in detail["message"]
