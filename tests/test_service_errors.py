"""Hostile and mistaken input over real HTTP: a 4xx naming the item and field, never a 5xx or a NaN."""

from __future__ import annotations

import json
import math
import random

import httpx
import pytest
from serving import running_server

GOOD = {"response": "<answer>yes</answer>", "ground_truth": "yes", "task_type": "yes_no"}


def score(url: str, payload: object, **kwargs: object) -> httpx.Response:
    return httpx.post(url + "/score", json=payload, timeout=60, **kwargs)


def only_detail(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    (detail,) = body["error"]["details"]
    return detail


def test_unknown_task_type_lists_valid_types(server) -> None:
    r = score(server.url, {"items": [GOOD, {**GOOD, "id": "x7", "task_type": "summarise"}]})
    assert r.status_code == 422
    detail = only_detail(r)
    assert detail["item"] == 1 and detail["id"] == "x7" and detail["field"] == "task_type"
    for name in ("yes_no", "mcq", "chart", "grounding", "open_ended"):
        assert name in detail["message"]
    assert "summarise" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("item", "field", "words"),
    [
        ({"ground_truth": "yes", "task_type": "yes_no"}, "response", "required"),
        ({"response": "yes", "task_type": "yes_no"}, "ground_truth", "required"),
        ({"response": "yes", "ground_truth": "yes"}, "task_type", "required"),
        ({**GOOD, "response": 42}, "response", "string"),
        ({**GOOD, "response": None}, "response", "string"),
        ({**GOOD, "ground_truth": None}, "ground_truth", "string, number, list or object"),
        ({**GOOD, "ground_truth": True}, "ground_truth", "boolean"),
        ({**GOOD, "task_type": ["yes_no"]}, "task_type", "string"),
        ({**GOOD, "group_id": 1.5}, "group_id", "string or an integer"),
        ({**GOOD, "id": {"a": 1}}, "id", "string or an integer"),
    ],
)
def test_missing_fields_and_wrong_types(server, item, field, words) -> None:
    r = score(server.url, {"items": [GOOD, GOOD, item]})
    assert r.status_code == 422, r.text
    detail = only_detail(r)
    assert (detail["item"], detail["field"]) == (2, field)
    assert words in detail["message"]


@pytest.mark.parametrize(
    "truth",
    ["[1, 2, 3]", [0, 0, 0, 10], ["a", "b", "c", "d"], "no box at all", '{"bbox": [1, 2]}', "[0, 0, NaN, 5]", ""],
)
def test_malformed_ground_truth_boxes(server, truth) -> None:
    item = {"response": "<answer>[0, 0, 10, 10]</answer>", "ground_truth": truth, "task_type": "grounding"}
    r = score(server.url, {"items": [GOOD, item]})
    assert r.status_code == 422, r.text
    detail = only_detail(r)
    assert (detail["item"], detail["field"]) == (1, "ground_truth")


@pytest.mark.parametrize(
    ("task", "truth"), [("yes_no", "maybe"), ("mcq", "   "), ("open_ended", "<answer> </answer>"), ("chart", "")]
)
def test_unusable_ground_truths_are_client_errors(server, task, truth) -> None:
    r = score(server.url, {"items": [{"response": "x", "ground_truth": truth, "task_type": task}]})
    assert r.status_code == 422
    assert only_detail(r)["field"] == "ground_truth"


def test_every_bad_item_is_reported_at_once(server) -> None:
    items = [GOOD, {**GOOD, "task_type": "nope"}, GOOD, {**GOOD, "task_type": "grounding", "ground_truth": "[1]"}]
    details = score(server.url, {"items": items}).json()["error"]["details"]
    assert [(d["item"], d["field"]) for d in details] == [(1, "task_type"), (3, "ground_truth")]


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"format_weight": "heavy"}, "options.format_weight"),
        ({"format_weight": -1}, "options.format_weight"),
        ({"bmas_reduction": "max"}, "options.bmas_reduction"),
        ({"temperature": 1}, "options.temperature"),
    ],
)
def test_bad_options(server, options, field) -> None:
    r = score(server.url, {"items": [GOOD], "options": options})
    assert r.status_code == 422
    assert only_detail(r)["field"] == field


def test_non_finite_option_is_rejected(server) -> None:
    body = '{"items": [{"response": "yes", "ground_truth": "yes", "task_type": "yes_no"}], "options": {"format_weight": NaN}}'
    r = httpx.post(server.url + "/score", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert only_detail(r)["field"] == "options.format_weight"


@pytest.mark.parametrize(
    ("content", "headers", "message"),
    [
        (b"{not json", {"content-type": "application/json"}, "not valid JSON"),
        (b'{"items": 3}', {"content-type": "application/json"}, "list"),
        (b"[1, 2]", {"content-type": "application/json"}, "JSON object"),
        (b'{"items": []}', {}, "Content-Type: application/json"),
        (b'{"items": [3]}', {"content-type": "application/json"}, "JSON object"),
    ],
)
def test_malformed_bodies(server, content, headers, message) -> None:
    r = httpx.post(server.url + "/score", content=content, headers=headers)
    assert r.status_code == 422, r.text
    assert message in only_detail(r)["message"]


def test_limits_items_text_and_body(default_table) -> None:
    with running_server(default_table, max_items_per_request=3, max_chars_per_text=50, max_body_bytes=4096) as srv:
        r = score(srv.url, {"items": [GOOD] * 4})
        assert r.status_code == 413
        assert r.json()["error"]["type"] == "too_many_items" and "3" in r.json()["error"]["message"]
        r = score(srv.url, {"items": [GOOD, {**GOOD, "response": "y" * 51}]})
        assert r.status_code == 422
        assert only_detail(r) == {"item": 1, "field": "response", "message": "is 51 characters; the limit is 50"}
        r = score(srv.url, {"items": [{**GOOD, "ground_truth": "yes " * 20}]})
        assert (r.status_code, only_detail(r)["field"]) == (422, "ground_truth")
        big = json.dumps({"items": [GOOD], "pad": "x" * 5000}).encode()
        r = httpx.post(srv.url + "/score", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["type"] == "body_too_large"

        def chunks():  # no Content-Length: the limit must still hold on the bytes received
            yield b'{"items": [], "pad": "'
            for _ in range(10):
                yield b"x" * 1000
            yield b'"}'

        r = httpx.post(srv.url + "/score", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["type"] == "body_too_large"


HOSTILE_RESPONSES = [
    "", " ", "<answer></answer>", "<think>never closed", "<answer>1e999</answer>", "<answer>nan</answer>",
    "<answer>-inf</answer>", "<answer>[nan, 0, 1, 1]</answer>", "<answer>[1e308, 1e308, -1e308, -1e308]</answer>",
    "<answer>[[0,0],[1,1],[0,1],[1,0]]</answer>", "\x00\x01\x02", "🐶" * 1000, "<answer>" * 500,
    "[" * 5000 + "]" * 5000, '{"bbox": {"bbox": {"bbox": [1, 2, 3, 4]}}}', "9" * 5000, "a " * 20000,
]


TRUTHS = {"yes_no": "yes", "mcq": "B", "chart": "12", "grounding": [0, 0, 10, 10], "open_ended": "a dog",
          "math": "5", "temporal_grounding": [10, 20], "ocr": "Paris", "counting": 3, "point": [0, 0, 10, 10]}


@pytest.mark.parametrize("task", list(TRUTHS))
def test_hostile_responses_score_finite(server, task) -> None:
    truth = TRUTHS[task]
    items = [{"response": text, "ground_truth": truth, "task_type": task} for text in HOSTILE_RESPONSES]
    r = score(server.url, {"items": items})
    assert r.status_code == 200, r.text
    for result in r.json()["results"]:
        for value in (result["reward"], result["accuracy"], result["format"]):
            assert math.isfinite(value)
        low, high = (-2.0, 2.0) if task == "open_ended" else (0.0, 1.0)
        assert low <= result["accuracy"] <= high


def test_random_junk_never_gets_a_5xx(server) -> None:
    rng = random.Random(0)
    atoms = [None, True, 0, -1, 1.5, "", "yes", "grounding", "[1,2,3,4]", [], {}, [1, 2, 3, 4], {"x": 1}]

    def junk(depth: int = 0) -> object:
        if depth > 2 or rng.random() < 0.4:
            return rng.choice(atoms)
        if rng.random() < 0.5:
            return [junk(depth + 1) for _ in range(rng.randint(0, 3))]
        keys = ["items", "options", "response", "ground_truth", "task_type", "group_id", "id", "format_weight"]
        return {rng.choice(keys): junk(depth + 1) for _ in range(rng.randint(0, 4))}

    for _ in range(150):
        def item() -> object:
            extra = junk()
            return {**GOOD, **extra} if isinstance(extra, dict) else extra

        payload = {"items": [item() for _ in range(3)]}
        if not isinstance(payload["items"][0], dict) or rng.random() < 0.3:
            payload = junk()
        try:
            r = score(server.url, payload)
        except TypeError:  # httpx refused to encode the payload; nothing was sent
            continue
        assert r.status_code < 500, (payload, r.text)
        assert "NaN" not in r.text and "Infinity" not in r.text


def test_bearer_token_for_scoring(default_table) -> None:
    with running_server(default_table, api_token="s3cret") as srv:
        r = score(srv.url, {"items": [GOOD]})
        assert r.status_code == 401 and r.json()["error"]["type"] == "unauthorized"
        assert score(srv.url, {"items": [GOOD]}, headers={"authorization": "Bearer wrong"}).status_code == 401
        assert score(srv.url, {"items": [GOOD]}, headers={"authorization": "Bearer s3cret"}).status_code == 200
        assert httpx.get(srv.url + "/healthz").status_code == 200  # probes need no token


def test_admin_reload_disabled_without_token(server) -> None:
    r = httpx.post(server.url + "/admin/reload", json={"model_path": None})
    assert r.status_code == 404 and r.json()["error"]["type"] == "admin_disabled"


def test_unknown_route_is_json_404(server) -> None:
    r = httpx.get(server.url + "/nope")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found"


def test_non_ascii_bearer_token_is_a_401_not_a_500(default_table) -> None:
    with running_server(default_table, api_token="s3cret") as srv:
        r = httpx.post(srv.url + "/score", content=json.dumps({"items": [GOOD]}).encode(),
                       headers={"content-type": "application/json", "authorization": "Bearer \u00e9t\u00e9".encode()})
        assert r.status_code == 401


def test_lone_surrogates_are_422_on_both_endpoints(server) -> None:
    body = '{"items": [{"response": "<answer>a \\ud800 b</answer>", "ground_truth": "a b", "task_type": "open_ended"}]}'
    r = httpx.post(server.url + "/score", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422 and only_detail(r)["field"] == "response"
    body = ('{"query": ["Q: describe. <answer>a \\ud800 b</answer>"], "prompts": ["Q: describe."],'
            ' "labels": [{"ground_truth": "a b", "task_type": "open_ended"}]}')
    r = httpx.post(server.url + "/get_reward", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"][0]["field"] == "query"


def test_non_finite_ground_truth_is_422(server) -> None:
    body = '{"items": [{"response": "<answer>NaN</answer>", "ground_truth": NaN, "task_type": "chart"}]}'
    r = httpx.post(server.url + "/score", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422
    detail = only_detail(r)
    assert detail["field"] == "ground_truth" and "finite" in detail["message"]


def test_openrlhf_null_task_type_falls_back_to_the_url(server) -> None:
    body = {"query": ["Is it a dog? <answer>yes</answer>"], "prompts": ["Is it a dog?"],
            "labels": [{"ground_truth": "yes", "task_type": None}]}
    r = httpx.post(server.url + "/get_reward?task_type=yes_no", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["scores"] == [1.0]
