"""Grounding reward (SPEC §5): shape parsing, IoU, first-box rule, optimal matching."""


import httpx
import pytest

from reward_server.rewards.errors import InvalidGroundTruth
from reward_server.rewards.grounding import (
    MAX_REPAIR_POINTS,
    box_iou,
    grounding_reward,
    match_score,
    parse_truth_shapes,
    polygon_iou,
    shape_iou,
)
from reward_server.rewards.shapes import Box, Polygon, Unusable, parse_shapes

SQUARE_0_2 = ((0.0, 0.0), (2.0, 0.0), (2.0, 2.0), (0.0, 2.0))
SQUARE_1_3 = ((1.0, 1.0), (3.0, 1.0), (3.0, 3.0), (1.0, 3.0))

# ------------------------------------------------------------------------------------------ parsing


@pytest.mark.parametrize(
    ("text", "boxes"),
    [
        ("[10, 20, 30, 40]", [(10, 20, 30, 40)]),
        ("[10,20,30,40]", [(10, 20, 30, 40)]),
        ("[ 10.5 ,20 , 30.25,40 ]", [(10.5, 20, 30.25, 40)]),
        ("[0.1, 0.2, 0.5, 0.6]", [(0.1, 0.2, 0.5, 0.6)]),
        ("[30, 40, 10, 20]", [(10, 20, 30, 40)]),  # swapped corners
        ("[30, 20, 10, 40]", [(10, 20, 30, 40)]),  # x swapped only
        ("[[1,2,3,4],[5,6,7,8]]", [(1, 2, 3, 4), (5, 6, 7, 8)]),
        ('[{"bbox_2d": [1, 2, 3, 4], "label": "cat 2"}]', [(1, 2, 3, 4)]),
        (
            '[{"bbox_2d": [1,2,3,4], "label": "a"}, {"bbox_2d": [5,6,7,8], "label": "b"}]',
            [(1, 2, 3, 4), (5, 6, 7, 8)],
        ),
        ('{"bbox": [3, 4, 1, 2]}', [(1, 2, 3, 4)]),
        ('{"bbox_2d": [1,2,3,4], "point_2d": [2, 3], "size": [640, 480]}', [(1, 2, 3, 4)]),
        ("(10,20,30,40)", [(10, 20, 30, 40)]),
        ("The box is [10, 20, 30, 40].", [(10, 20, 30, 40)]),
        ("from (10, 20) to (30, 40)", [(10, 20, 30, 40)]),
        ("[[10, 20], [30, 40]]", [(10, 20, 30, 40)]),
        ("<|box_start|>(10,20),(30,40)<|box_end|>", [(10, 20, 30, 40)]),
        ('```json\n[{"bbox_2d": [1, 2, 3, 4]}]\n```', [(1, 2, 3, 4)]),
        ("Here: ```\n[1, 2, 3, 4]\n``` done", [(1, 2, 3, 4)]),
        ('"[1, 2, 3, 4]"', [(1, 2, 3, 4)]),  # JSON-encoded string of JSON
        ("['10', '20', '30', '40']", [(10, 20, 30, 40)]),  # Python repr with strings
        ("10, 20, 30, 40", [(10, 20, 30, 40)]),
        ("x1=10, y1=20, x2=30, y2=40", [(10, 20, 30, 40)]),
        ('The answer {"bbox": [1,2,3,4], "label": "dog 7"} ok', [(1, 2, 3, 4)]),
        ("[[[[1, 2, 3, 4]]]]", [(1, 2, 3, 4)]),
        ("[1, 2, 3, 4", [(1, 2, 3, 4)]),  # truncated generation
        ("[-5, -5, 5, 5]", [(-5, -5, 5, 5)]),
        ("[1e1, 2e1, 3e1, 4e1]", [(10, 20, 30, 40)]),
    ],
)
def test_parse_boxes(text: str, boxes: list[tuple[float, ...]]) -> None:
    parsed = parse_shapes(text)
    assert parsed == [Box(*map(float, box)) for box in boxes]


def test_parse_polygon() -> None:
    assert parse_shapes("[[0,0],[4,0],[0,4]]") == [Polygon(((0, 0), (4, 0), (0, 4)))]
    assert parse_shapes('{"polygon": [[0,0],[4,0],[4,4],[0,4]]}') == [
        Polygon(((0, 0), (4, 0), (4, 4), (0, 4)))
    ]
    assert parse_shapes("(0,0),(4,0),(0,4)") == [Polygon(((0, 0), (4, 0), (0, 4)))]


@pytest.mark.parametrize(
    "text", ["", "no box here", "[1, 2, 3]", "[1, 2]", "[]", "{}", "42", "null", "[[1,2]]", "(see 2)"]
)
def test_no_shape(text: str) -> None:
    assert parse_shapes(text) == []


@pytest.mark.parametrize(
    "text", ["[1, NaN, 3, 4]", "[1, 2, 3, Infinity]", '[1, 2, "a", 4]', "[1, 2, 3, 1e999]", "[1, true, 3, 4]"]
)
def test_bad_numbers_make_an_unusable_prediction(text: str) -> None:
    shapes = parse_shapes(text)
    assert len(shapes) == 1 and isinstance(shapes[0], Unusable)


# ---------------------------------------------------------------------------------------------- IoU


@pytest.mark.parametrize(
    ("a", "b", "iou"),
    [
        ((0, 0, 10, 10), (0, 0, 10, 10), 1.0),
        ((0, 0, 10, 10), (5, 0, 15, 10), 1 / 3),  # 50 / 150
        ((0, 0, 10, 10), (10, 0, 20, 10), 0.0),  # touching edges: no +1 convention
        ((0, 0, 10, 10), (20, 20, 30, 30), 0.0),
        ((0, 0, 10, 10), (2, 2, 8, 8), 0.36),  # contained: 36 / 100
        ((0, 0, 4, 4), (2, 2, 6, 6), 4 / 28),
        ((0.1, 0.1, 0.5, 0.5), (0.3, 0.3, 0.7, 0.7), 0.04 / 0.28),
        ((5, 5, 5, 10), (0, 0, 10, 10), 0.0),  # degenerate prediction
        ((0, 0, 1e200, 1e200), (0, 0, 1e200, 1e200), 0.0),  # overflowing area: 0, not NaN
    ],
)
def test_box_iou(a: tuple[float, ...], b: tuple[float, ...], iou: float) -> None:
    assert box_iou(Box.from_corners(*a), Box.from_corners(*b)) == pytest.approx(iou)


def test_polygon_iou_of_known_squares_and_triangles() -> None:
    assert polygon_iou(Polygon(SQUARE_0_2), Polygon(SQUARE_1_3)) == pytest.approx(1 / 7)
    # Two right triangles of area 8 sharing the triangle (0,0),(4,0),(2,2) of area 4: 4 / 12.
    first = Polygon(((0, 0), (4, 0), (0, 4)))
    second = Polygon(((0, 0), (4, 0), (4, 4)))
    assert polygon_iou(first, second) == pytest.approx(1 / 3)
    assert polygon_iou(Polygon(SQUARE_0_2), Box(0, 0, 2, 2)) == pytest.approx(1.0)
    assert shape_iou(Box(1, 1, 3, 3), Polygon(SQUARE_0_2)) == pytest.approx(1 / 7)


def test_self_intersecting_polygon_is_repaired_not_fatal() -> None:
    bowtie = Polygon(((0, 0), (2, 2), (2, 0), (0, 2)))  # two triangles of area 1 each
    assert polygon_iou(bowtie, Box(0, 0, 2, 2)) == pytest.approx(0.5)


def test_huge_tangled_polygon_scores_zero_quickly() -> None:
    points = tuple(((i * 7919) % 1000.0, (i * 104729) % 1000.0) for i in range(MAX_REPAIR_POINTS * 50))
    assert polygon_iou(Polygon(points), Box(0, 0, 500, 500)) == 0.0


def test_collinear_polygon_is_degenerate() -> None:
    assert polygon_iou(Polygon(((0, 0), (1, 1), (2, 2))), Box(0, 0, 2, 2)) == 0.0


def test_unusable_scores_zero() -> None:
    assert shape_iou(Unusable("nan"), Box(0, 0, 1, 1)) == 0.0


# -------------------------------------------------------------------------------------- the reward

ONE = parse_truth_shapes("[0, 0, 10, 10]")
TWO = parse_truth_shapes("[[0, 0, 10, 10], [20, 20, 30, 30]]")


@pytest.mark.parametrize(
    ("span", "expected"),
    [
        ("[0, 0, 10, 10]", 1.0),
        ("[10, 10, 0, 0]", 1.0),
        ("[5, 0, 15, 10]", 1 / 3),
        ("[0.0, 0.0, 10.0, 10.0]", 1.0),
        ("[50, 50, 60, 60], [0, 0, 10, 10]", 0.0),  # only the first prediction counts
        ("[0, 0, 10, 10], [50, 50, 60, 60]", 1.0),
        ("[1, NaN, 3, 4], [0, 0, 10, 10]", 0.0),  # the first one is garbage
        ("[5, 5, 5, 10]", 0.0),
        ("no box", 0.0),
        ("", 0.0),
        ('[{"bbox_2d": [0, 0, 10, 5], "label": "x"}]', 0.5),
        ("[[0,0],[10,0],[10,10],[0,10]]", 1.0),  # polygon prediction against a box
    ],
)
def test_single_truth_uses_the_first_prediction(span: str, expected: float) -> None:
    assert grounding_reward(span, ONE) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("span", "expected"),
    [
        ("[[0,0,10,10],[20,20,30,30]]", 1.0),
        ("[[20,20,30,30],[0,0,10,10]]", 1.0),  # order does not matter
        ("[[0,0,10,10],[20,20,30,30],[50,50,60,60]]", 2 / 3),  # one extra
        ("[[50,50,60,60],[20,20,30,30],[0,0,10,10]]", 2 / 3),
        ("[[0,0,10,10]]", 1 / 2),  # one miss
        ("[[0,0,10,10],[25,20,35,30]]", (1 + 1 / 3) / 2),
        ("[[0,0,10,10],[0,0,10,10]]", 1 / 2),  # one-to-one: a duplicate cannot match twice
        ("[[0,0,10,10],[NaN,0,1,1]]", 1 / 2),  # an unusable extra still counts as a prediction
        ("nothing", 0.0),
    ],
)
def test_several_truths_use_optimal_matching(span: str, expected: float) -> None:
    assert grounding_reward(span, TWO) == pytest.approx(expected)


def test_optimal_beats_greedy() -> None:
    truths = (Box(0, 0, 10, 10), Box(10, 0, 20, 10))
    # p1 overlaps g1 by 2/3 and g2 by 1/9; p2 overlaps g1 by 0.6. Greedy takes p1-g1 (2/3 total);
    # the optimum pairs p1-g2 and p2-g1 for 1/9 + 0.6.
    predictions = [Box(2, 0, 12, 10), Box(0, 0, 6, 10)]
    assert match_score(predictions, truths) == pytest.approx((1 / 9 + 0.6) / 2)


def test_polygon_truths_with_matching() -> None:
    truths = parse_truth_shapes("[[[0,0],[2,0],[2,2],[0,2]], [[10,10],[12,10],[12,12],[10,12]]]")
    assert grounding_reward("[[10,10,12,12],[1,1,3,3]]", truths) == pytest.approx((1 + 1 / 7) / 2)


def test_many_predictions_are_fast_and_counted() -> None:
    span = ", ".join("[0,0,10,10]" for _ in range(5000))
    assert grounding_reward(span, TWO) == pytest.approx(1 / 5000)


# ---------------------------------------------------------------------------------- ground truths


@pytest.mark.parametrize(
    ("text", "count"),
    [
        ("[1, 2, 3, 4]", 1),
        ('"[1, 2, 3, 4]"', 1),
        ("[[1,2,3,4],[5,6,7,8]]", 2),
        ('{"bbox": [1, 2, 3, 4]}', 1),
        ('[{"bbox_2d": [1, 2, 3, 4], "label": "cat"}]', 1),
        ("[[0,0],[4,0],[0,4]]", 1),
        ("(1, 2, 3, 4)", 1),
    ],
)
def test_truth_forms(text: str, count: int) -> None:
    assert len(parse_truth_shapes(text)) == count


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[1, 2, 3]", "4 numbers"),
        ("[1, 2, 3, 4, 5]", "4 numbers"),
        ("[[1, 2, 3, 4], [5, 6, 7]]", "got 3"),
        ('[1, 2, "a", 4]', "non-numeric"),
        ("[1, NaN, 3, 4]", "NaN"),
        ("[1, 2, Infinity, 4]", "infinite"),
        ("[0, 0, 0, 10]", "zero area"),
        ("[5, 5, 5, 5]", "zero area"),
        ("[[0,0],[1,1],[2,2]]", "zero area"),
        ("no box at all", "no box"),
        ('{"bbox": "left"}', "not a list"),
        ("[0, 0, 1e200, 1e200]", "not finite"),
    ],
)
def test_malformed_truth_raises(text: str, fragment: str) -> None:
    with pytest.raises(InvalidGroundTruth) as info:
        parse_truth_shapes(text)
    assert info.value.field == "ground_truth"
    assert fragment in info.value.message


# ---------------------------------------------------------------------------------- labelled boxes


def test_labels_are_kept_and_folded() -> None:
    shapes = parse_shapes('[{"bbox_2d": [1, 2, 3, 4], "label": "  Dog "}, {"bbox": [5, 6, 7, 8]}, {"label": "cat"}]')
    assert [(s.x1, s.label) for s in shapes] == [(1, "dog"), (5, None)]
    (polygon,) = parse_shapes('{"polygon": [[0,0],[4,0],[0,4]], "label": "Roof"}')
    assert polygon.label == "roof"
    assert parse_shapes('{"bbox": [1, 2, 3, 4], "label": 3}')[0].label == "3"  # a class id
    assert parse_shapes('{"bbox": [1, 2, 3, 4], "label": ""}')[0].label is None
    assert parse_shapes('{"bbox": [1, 2, 3, 4], "label": ["x"]}')[0].label is None  # a response: no label
    assert parse_shapes("dog: [1, 2, 3, 4]")[0].label is None  # labels are read from JSON only
    # A label is not part of the shape: equal coordinates are the same box.
    assert shapes[0] == Box(1, 2, 3, 4)


def test_a_truth_label_that_is_not_a_string_is_a_client_error() -> None:
    with pytest.raises(InvalidGroundTruth, match="label"):
        parse_truth_shapes('[{"bbox_2d": [0, 0, 10, 10], "label": {"name": "dog"}}]')


LABELLED = parse_truth_shapes(
    '[{"bbox_2d": [0, 0, 10, 10], "label": "dog"}, {"bbox_2d": [20, 20, 30, 30], "label": "cat"}]'
)


@pytest.mark.parametrize(
    ("span", "expected"),
    [
        ('[{"bbox_2d": [0,0,10,10], "label": "dog"}, {"bbox_2d": [20,20,30,30], "label": "cat"}]', 1.0),
        ('[{"bbox_2d": [0,0,10,10], "label": "DOG "}, {"bbox_2d": [20,20,30,30], "label": " Cat"}]', 1.0),
        # Right boxes, swapped labels: each predicted box may only match the other label's truth.
        ('[{"bbox_2d": [0,0,10,10], "label": "cat"}, {"bbox_2d": [20,20,30,30], "label": "dog"}]', 0.0),
        # Boxes without labels match no labelled truth box.
        ("[[0,0,10,10],[20,20,30,30]]", 0.0),
        ('[{"bbox_2d": [0,0,10,10]}, {"bbox_2d": [20,20,30,30], "label": "cat"}]', 1 / 2),
        # One right, one missing: summed IoU over max(#pred, #gt).
        ('[{"bbox_2d": [0,0,10,10], "label": "dog"}]', 1 / 2),
        # An extra box with a third label still counts in the divisor.
        (('[{"bbox_2d": [0,0,10,10], "label": "dog"}, {"bbox_2d": [20,20,30,30], "label": "cat"},'
         ' {"bbox_2d": [0,0,10,10], "label": "bird"}]'), 2 / 3),
        # The matching is optimal within labels: two dogs, the better one is paired.
        (('[{"bbox_2d": [5,0,15,10], "label": "dog"}, {"bbox_2d": [0,0,10,10], "label": "dog"},'
         ' {"bbox_2d": [20,20,30,30], "label": "cat"}]'), 2 / 3),
        ("nothing", 0.0),
    ],
)
def test_labelled_truths_match_only_their_label(span: str, expected: float) -> None:
    assert grounding_reward(span, LABELLED) == pytest.approx(expected)


def test_one_labelled_truth_box_keeps_the_first_box_rule() -> None:
    truth = parse_truth_shapes('[{"bbox_2d": [0, 0, 10, 10], "label": "dog"}]')
    assert grounding_reward('[{"bbox_2d": [0, 0, 10, 5], "label": "Dog"}]', truth) == pytest.approx(0.5)
    assert grounding_reward('[{"bbox_2d": [0, 0, 10, 10], "label": "cat"}]', truth) == 0.0
    assert grounding_reward("[0, 0, 10, 10]", truth) == 0.0  # no label
    # The first box has the wrong label: the right one after it does not count.
    span = '[{"bbox_2d": [0, 0, 10, 10], "label": "cat"}, {"bbox_2d": [0, 0, 10, 10], "label": "dog"}]'
    assert grounding_reward(span, truth) == 0.0


def test_mixed_labelled_and_unlabelled_truths() -> None:
    truths = parse_truth_shapes('[{"bbox_2d": [0, 0, 10, 10], "label": "dog"}, [20, 20, 30, 30]]')
    # The unlabelled truth takes any prediction; the labelled one only a dog.
    assert grounding_reward("[[0,0,10,10],[20,20,30,30]]", truths) == pytest.approx(1 / 2)
    assert grounding_reward('[{"bbox_2d": [0,0,10,10], "label": "dog"}, [20,20,30,30]]', truths) == pytest.approx(1.0)


def test_labelled_polygon_truths() -> None:
    truths = parse_truth_shapes(
        '[{"polygon": [[0,0],[2,0],[2,2],[0,2]], "label": "a"}, {"polygon": [[10,10],[12,10],[12,12],[10,12]], "label": "b"}]'
    )
    span = '[{"bbox_2d": [10,10,12,12], "label": "b"}, {"bbox_2d": [1,1,3,3], "label": "a"}]'
    assert grounding_reward(span, truths) == pytest.approx((1 + 1 / 7) / 2)
    span = '[{"bbox_2d": [10,10,12,12], "label": "a"}, {"bbox_2d": [1,1,3,3], "label": "b"}]'
    assert grounding_reward(span, truths) == 0.0


def test_labelled_detection_through_the_server(server) -> None:
    truth = [{"bbox_2d": [0, 0, 10, 10], "label": "dog"}, {"bbox_2d": [20, 20, 30, 30], "label": "cat"}]
    items = [
        {"response": '<answer>[{"bbox_2d": [0,0,10,10], "label": "Dog"}, {"bbox_2d": [20,20,30,30], "label": "cat"}]</answer>',
         "ground_truth": truth, "task_type": "detection"},
        {"response": "<answer>[[0,0,10,10],[20,20,30,30]]</answer>", "ground_truth": truth, "task_type": "detection"},
    ]
    r = httpx.post(server.url + "/score", json={"items": items, "options": {"explain": True}}, timeout=60)
    assert r.status_code == 200, r.text
    labelled, unlabelled = r.json()["results"]
    assert labelled["accuracy"] == pytest.approx(1.0)
    assert labelled["parsed"] == [{"bbox_2d": [0, 0, 10, 10], "label": "dog"}, {"bbox_2d": [20, 20, 30, 30], "label": "cat"}]
    assert unlabelled["accuracy"] == 0.0 and unlabelled["parsed"] == [[0, 0, 10, 10], [20, 20, 30, 30]]


def test_bad_label_is_a_422_naming_the_item(server) -> None:
    items = [{"response": "<answer>[0,0,10,10]</answer>", "ground_truth": [{"bbox_2d": [0, 0, 10, 10], "label": True}],
              "task_type": "grounding", "id": "g1"}]
    r = httpx.post(server.url + "/score", json={"items": items}, timeout=60)
    assert r.status_code == 422, r.text
    (detail,) = r.json()["error"]["details"]
    assert (detail["item"], detail["id"], detail["field"]) == (0, "g1", "ground_truth") and "label" in detail["message"]
