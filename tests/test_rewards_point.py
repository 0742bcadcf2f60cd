"""Point in box (SPEC §13e): the first point of the span inside a truth box, edges included."""

from __future__ import annotations

import httpx
import pytest

from reward_server.rewards.errors import InvalidGroundTruth
from reward_server.rewards.families.point import Point, PointInBox, points_of
from reward_server.rewards.options import ResolvedOptions

FAMILY = PointInBox()


def score(span: str, truth: str) -> float:
    return FAMILY.score(span, FAMILY.parse_truth(truth), ResolvedOptions()).accuracy


@pytest.mark.parametrize(
    ("span", "point"),
    [
        ("(12, 30)", (12, 30)),
        ("[12, 30]", (12, 30)),
        ("(12.5,30.25)", (12.5, 30.25)),
        ("<point>12, 30</point>", (12, 30)),
        ("<point>12 30</point>", (12, 30)),
        ("<point>(12, 30)</point>", (12, 30)),
        ('{"point_2d": [12, 30], "label": "OK button"}', (12, 30)),
        ("x=12, y=30", (12, 30)),
        ("x: 12 y: 30", (12, 30)),
        ('<point x="12.5" y="30.5" alt="OK">OK</point>', (12.5, 30.5)),  # Molmo
        ("click(start_box='(12,30)')", (12, 30)),  # UI-TARS style
        ("['12', '30']", (12, 30)),
        ("I would click at (12, 30), the OK button.", (12, 30)),
        ("(12, 30) then (500, 500)", (12, 30)),  # the first point
        ("[10, 20, 30, 40]", (20, 30)),  # only a box: its centre
        ('{"bbox_2d": [30, 40, 10, 20]}', (20, 30)),  # corners re-ordered, then the centre
        ("box [0, 0, 100, 50] or point (7, 8)", (7, 8)),  # a point wins over a box
        ("[[12, 30], [40, 50]]", (12, 30)),  # two points: the first
        ("(-5, 3)", (-5, 3)),
    ],
)
def test_first_point(span: str, point: tuple[float, float]) -> None:
    assert points_of(span)[0] == Point(*map(float, point))


@pytest.mark.parametrize("span", ["", "the OK button", "(12)", "[1, 2, 3]", "(nan, 3)", "x=12", "(1e999, 5)"])
def test_no_point(span: str) -> None:
    assert points_of(span) == []


@pytest.mark.parametrize(
    ("span", "truth", "expected"),
    [
        ("(15, 25)", "[10, 20, 30, 40]", 1.0),
        ("(10, 20)", "[10, 20, 30, 40]", 1.0),  # a corner: edges included
        ("(30, 40)", "[10, 20, 30, 40]", 1.0),
        ("(30.001, 40)", "[10, 20, 30, 40]", 0.0),
        ("(15, 25)", "[30, 40, 10, 20]", 1.0),  # truth corners re-ordered
        ("(5, 5)", "[10, 20, 30, 40]", 0.0),
        ("(55, 55)", "[[10, 20, 30, 40], [50, 50, 60, 60]]", 1.0),  # any acceptable box
        ("(5, 5) or (15, 25)", "[10, 20, 30, 40]", 0.0),  # several different points: a hedge
        ("(15, 25) or (5, 5)", "[10, 20, 30, 40]", 0.0),  # ... whichever comes first
        ("(15, 25), i.e. x=15, y=25", "[10, 20, 30, 40]", 1.0),  # the same point twice: one answer
        ("[12, 22, 28, 38] [0, 0, 1000, 1000]", "[10, 20, 30, 40]", 0.0),  # boxes with different centres
        ("[0, 0, 1000, 1000]", "[10, 20, 30, 40]", 0.0),  # a box covering the image: its centre
        ("[12, 22, 28, 38]", "[10, 20, 30, 40]", 1.0),  # a box on the target: its centre
        ("no idea", "[10, 20, 30, 40]", 0.0),
        ("(15, 25)", '[{"bbox_2d": [10, 20, 30, 40], "label": "OK"}]', 1.0),
    ],
)
def test_score(span: str, truth: str, expected: float) -> None:
    assert score(span, truth) == expected


@pytest.mark.parametrize(
    ("truth", "fragment"),
    [
        ("no box", "no box"),
        ("[10, 20]", "no box"),  # a point is not a target
        ("[10, 20, 10, 40]", "zero area"),
        ("[[0,0],[4,0],[0,4]]", "not polygons"),
        ("[1, 2, 3]", "4 numbers"),
        ("[1, NaN, 3, 4]", "NaN"),
    ],
)
def test_malformed_truths(truth: str, fragment: str) -> None:
    with pytest.raises(InvalidGroundTruth) as info:
        FAMILY.parse_truth(truth)
    assert fragment in info.value.message


def test_explain_gives_the_point() -> None:
    truth = FAMILY.parse_truth("[10, 20, 30, 40]")
    assert FAMILY.score("[10, 20, 30, 40]", truth, ResolvedOptions(explain=True)).parsed == [20.0, 30.0]


def test_through_the_server(server) -> None:
    items = [
        {"response": "<think>t</think><answer><point>15, 25</point></answer>", "ground_truth": [10, 20, 30, 40],
         "task_type": "gui_click"},
        {"response": "<answer>(31, 25)</answer>", "ground_truth": "[10, 20, 30, 40]", "task_type": "click"},
    ]
    r = httpx.post(server.url + "/score", json={"items": items, "options": {"explain": True}}, timeout=60)
    assert r.status_code == 200, r.text
    first, second = r.json()["results"]
    assert (first["task_type"], first["accuracy"], first["reward"], first["parsed"]) == ("point", 1.0, 2.0, [15, 25])
    assert (second["accuracy"], second["parsed"]) == (0.0, [31, 25])


def test_bad_truth_is_a_422_naming_the_item(server) -> None:
    items = [{"response": "<answer>(1, 2)</answer>", "ground_truth": [5, 5, 5, 9], "task_type": "pointing"}]
    r = httpx.post(server.url + "/score", json={"items": items}, timeout=60)
    assert r.status_code == 422, r.text
    (detail,) = r.json()["error"]["details"]
    assert (detail["item"], detail["field"]) == (0, "ground_truth") and "zero area" in detail["message"]
