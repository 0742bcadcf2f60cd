"""Hostile bodies on every endpoint, over real HTTP: always a JSON 4xx naming the field, never a 5xx.

Deep nesting, invalid UTF-8, huge numbers and NaN/Infinity literals anywhere, on /score,
/get_reward, /slime, /admin/reload, the difficulty routes and the GET routes; plus the rules that go with them: the token is
checked before the body, options are numbers only, an error never echoes an id the schema
forbids, a reload names the field that is wrong.
"""

from __future__ import annotations

import json

import httpx
import pytest
from serving import running_server

from reward_server.items.json_values import MAX_DEPTH
from reward_server.offline.rows import iter_rows

API, ADMIN = "hostile-api", "hostile-admin"
JSON = {"content-type": "application/json"}
AUTH = {**JSON, "authorization": f"Bearer {API}"}
ADMIN_AUTH = {**JSON, "authorization": f"Bearer {ADMIN}"}
GOOD = {"response": "<think>t</think><answer>yes</answer>", "ground_truth": "yes", "task_type": "yes_no"}
SAMPLE = {"query": ["Is it? <think>t</think><answer>yes</answer>"], "prompts": ["Is it?"], "labels": [{"ground_truth": "yes",
                                                                                          "task_type": "yes_no"}]}


BODY_ROUTES = ["/score", "/get_reward", "/slime", "/admin/reload", "/v1/sample", "PUT /v1/pools/p1"]


@pytest.fixture(scope="module")
def srv(default_table, tmp_path_factory):
    state = tmp_path_factory.mktemp("hostile-state") / "state.sqlite"
    with running_server(default_table, api_token=API, admin_token=ADMIN, state_path=str(state)) as running:
        yield running


def post(srv, path: str, content: bytes, headers: dict | None = None) -> httpx.Response:
    """POST (or ``"PUT /path"``) with the route's token unless ``headers`` are given."""
    method, _, path = path.rpartition(" ")
    if headers is None:
        headers = ADMIN_AUTH if path == "/admin/reload" else AUTH
    return httpx.request(method or "POST", srv.url + path, content=content, headers=headers, timeout=120)


def assert_json_4xx(r: httpx.Response, status: int | None = None) -> list[dict]:
    """A client error in the one error shape; returns its details."""
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    if status is not None:
        assert r.status_code == status, r.text[:300]
    body = strict_json(r)
    assert set(body) == {"error"} and isinstance(body["error"]["message"], str)
    for detail in body["error"]["details"]:
        assert isinstance(detail["field"], str) and isinstance(detail["message"], str)
        assert "id" not in detail or type(detail["id"]) in (str, int)  # the ErrorDetail schema
    return body["error"]["details"]


def strict_json(r: httpx.Response) -> object:
    """The body as JSON, failing on a NaN or Infinity token (which strict JSON parsers refuse)."""

    def refuse(token: str) -> None:
        raise AssertionError(f"non-finite number {token} in the response: {r.text[:300]}")

    return json.loads(r.text, parse_constant=refuse)


def deep(depth: int, close: bool = True) -> str:
    return "[" * depth + ("]" * depth if close else "")


def fill(template: str, *values: str) -> bytes:
    """``template`` with each ``@@`` replaced by the next value (JSON text is full of braces)."""
    for value in values:
        template = template.replace("@@", value, 1)
    return template.encode()


def score_body(truth: str = '"yes"', task: str = "yes_no", extra: str = "") -> bytes:
    return fill('{"items": [{"response": "<answer>1</answer>", "ground_truth": @@, "task_type": "@@"@@}]}',
                truth, task, extra)


def reward_body(label: str, extra: str = "") -> bytes:
    return fill('{"query": ["Q <answer>1</answer>"], "prompts": ["Q"], "labels": [@@]@@}', label, extra)


# Bodies that are broken as a whole: each endpoint answers 422 invalid_request, field "body".
BROKEN = {
    "open brackets x100000": deep(100_000, close=False).encode(),
    "closed brackets x100000": deep(100_000).encode(),
    "objects nested 5000 deep": ('{"a":' * 5000 + "1" + "}" * 5000).encode(),
    "invalid UTF-8 byte": b"\xff\xfe{}",
    "invalid UTF-8 inside a string": b'{"items": [{"response": "\xc3\x28", "ground_truth": "y", "task_type": "yes_no"}]}',
    "UTF-8-encoded surrogate": b'{"query": ["\xed\xa0\x80"]}',
    "integer of 5000 digits": ("9" * 5000).encode(),
    "not JSON": b"{items: [}",
    "empty": b"",
}


@pytest.mark.parametrize("path", BODY_ROUTES)
@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_bodies_are_one_422_on_every_endpoint(srv, path: str, name: str) -> None:
    details = assert_json_4xx(post(srv, path, BROKEN[name]), 422)
    assert [d["field"] for d in details] == ["body"]
    if "deep" in name or "x100000" in name:
        assert f"more than {MAX_DEPTH} levels" in details[0]["message"]
    if "UTF-8" in name and "surrogate" not in name:
        assert "UTF-8" in details[0]["message"]


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/v1/info", "/metrics"])
@pytest.mark.parametrize("name", list(BROKEN))
def test_get_routes_ignore_hostile_bodies(srv, path: str, name: str) -> None:
    r = httpx.request("GET", srv.url + path, content=BROKEN[name], headers=JSON, timeout=60)
    assert r.status_code == 200


@pytest.mark.parametrize(
    ("truth", "task"),
    [
        (deep(MAX_DEPTH + 50), "chart"),  # deeper than the limit, inside the item
        ("[NaN]", "chart"), ("[1, 2, Infinity, 4]", "grounding"), ('{"bbox": [0, 0, -Infinity, 1]}', "grounding"),
        ('[[0, 0], [1, NaN], [0, 1]]', "grounding"), ("NaN", "chart"), ("-Infinity", "chart"), ("1e999", "chart"),
    ],
)
def test_deep_or_non_finite_ground_truth_is_a_422_on_score(srv, truth: str, task: str) -> None:
    details = assert_json_4xx(post(srv, "/score", score_body(truth, task)), 422)
    assert details[0]["item"] is None if truth.startswith("[" * 100) else details[0]["item"] == 0
    assert details[0]["field"] in ("body", "ground_truth")


@pytest.mark.parametrize(
    "label",
    [
        "[NaN]",
        '{"ground_truth": [0, 0, NaN, 1], "task_type": "grounding"}',
        json.dumps('{"ground_truth": [1, 2, NaN, 4], "task_type": "grounding"}'),  # the label as JSON text
        json.dumps('{"ground_truth": ' + deep(3000) + ', "task_type": "chart"}'),  # too deep for json.loads
        json.dumps('{"ground_truth": ' + deep(MAX_DEPTH + 10) + ', "task_type": "chart"}'),
        json.dumps('{"ground_truth": NaN, "task_type": "chart"}'),
        json.dumps('{"ground_truth": 1e999, "task_type": "chart"}'),
    ],
)
def test_deep_or_non_finite_labels_are_a_422_on_get_reward(srv, label: str) -> None:
    details = assert_json_4xx(post(srv, "/get_reward?task_type=grounding", reward_body(label)), 422)
    assert (details[0]["item"], details[0]["field"]) == (0, "labels")


def test_a_list_truth_at_the_depth_limit_is_still_scored(srv) -> None:
    """The limit is not a new restriction on real data: a truth nested 150 levels parses."""
    r = post(srv, "/score", score_body("[" * 150 + "1" + "]" * 150, "chart"))
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["accuracy"] in (0.0, 1.0)


HUGE = ["9" * 4000, "-" + "9" * 4000, "1e308", "1e999", "-1e999", "1e-999", "123456789012345678901234567890.5"]


@pytest.mark.parametrize("number", HUGE)
@pytest.mark.parametrize(
    "where",
    ["id", "group_id", "ground_truth", "format_weight", "get_reward_format_weight", "label", "reload_device"],
)
def test_huge_numbers_anywhere_are_scored_or_refused_never_500(srv, number: str, where: str) -> None:
    if where in ("id", "group_id"):
        r = post(srv, "/score", score_body('"yes"', extra=f', "{where}": {number}'))
    elif where == "ground_truth":
        r = post(srv, "/score", score_body(number, "chart"))
    elif where == "format_weight":
        r = post(srv, "/score", fill('{"items": [@@], "options": {"format_weight": @@}}', json.dumps(GOOD), number))
    elif where == "get_reward_format_weight":
        r = post(srv, "/get_reward", reward_body('{"ground_truth": "1", "task_type": "chart"}',
                                                 f', "format_weight": {number}'))
    elif where == "label":
        r = post(srv, "/get_reward?task_type=chart", reward_body(number))
    else:
        r = post(srv, "/admin/reload", fill('{"device": @@}', number))
    assert r.status_code < 500, r.text[:300]
    if r.status_code >= 400:
        assert_json_4xx(r)
    else:
        strict_json(r)
        if where in ("id", "group_id"):  # an integer id comes back exactly; a float one is refused
            assert "." not in number and "e" not in number
            assert str(r.json()["results"][0][where]) == number


NAN_LITERALS = ["NaN", "Infinity", "-Infinity"]


@pytest.mark.parametrize("literal", NAN_LITERALS)
@pytest.mark.parametrize(
    ("path", "template"),
    [
        ("/score", '{"items": [{"response": "r", "ground_truth": "1", "task_type": "chart", "id": @@}]}'),
        ("/score", '{"items": [{"response": @@, "ground_truth": "1", "task_type": "chart"}]}'),
        ("/score", '{"items": [{"response": "r", "ground_truth": "1", "task_type": @@}]}'),
        ("/score", '{"items": [{"response": "r", "ground_truth": "1", "task_type": "chart", "group_id": @@}]}'),
        ("/score", '{"items": [{"response": "r", "ground_truth": {"a": [1, @@]}, "task_type": "chart"}]}'),
        ("/score", '{"items": [{"response": "r", "ground_truth": "1", "task_type": "chart"}], "options": {"format_weight": @@}}'),
        ("/score", '{"items": [@@]}'),
        ("/score", '{"items": @@}'),
        ("/score", "@@"),
        ("/get_reward", '{"query": [@@], "labels": ["1"], "task_type": "chart"}'),
        ("/get_reward", '{"query": ["q"], "prompts": [@@], "labels": ["1"], "task_type": "chart"}'),
        ("/get_reward", '{"query": ["q"], "labels": [@@], "task_type": "chart"}'),
        ("/get_reward", '{"query": ["q"], "labels": [[1, 2, 3, @@]], "task_type": "grounding"}'),
        ("/get_reward", '{"query": ["q"], "labels": ["1"], "task_type": "chart", "format_weight": @@}'),
        ("/get_reward", '{"query": ["q"], "labels": ["1"], "task_type": @@}'),
        ("/get_reward", '{"query": ["q"], "labels": ["1"], "task_type": "chart", "eos": @@}'),
        ("/get_reward", "@@"),
        ("/slime", '{"prompt": "Q", "response": "<answer>1</answer>", "label": [0, 0, @@, 1], "task_type": "bbox"}'),
        ("/slime", '[{"prompt": "Q", "response": "r", "label": {"ground_truth": @@, "task_type": "chart"}}]'),
        ("/slime", '{"prompt": "Q", "response": @@, "label": "1", "task_type": "chart"}'),
        ("/v1/sample", '{"candidates": ["a", @@], "k": 1}'),
        ("/v1/sample", '{"candidates": ["a"], "k": @@}'),
        ("PUT /v1/pools/p1", '{"prompt_ids": [@@]}'),
        ("/admin/reload", '{"model_path": @@}'),
        ("/admin/reload", '{"dtype": @@}'),
        ("/admin/reload", "@@"),
    ],
)
def test_nan_literals_anywhere_are_a_422(srv, literal: str, path: str, template: str) -> None:
    details = assert_json_4xx(post(srv, path, fill(template, literal)), 422)
    assert details and all(d["field"] for d in details)


def test_nan_in_the_url_format_weight_is_a_422(srv) -> None:
    for value in ("nan", "inf", "-1e999", "true", "2x"):
        r = post(srv, f"/get_reward?format_weight={value}", json.dumps(SAMPLE).encode())
        details = assert_json_4xx(r, 422)
        assert details[0]["field"] == "format_weight"
    r = post(srv, "/get_reward?format_weight=2", json.dumps(SAMPLE).encode())
    assert r.status_code == 200 and r.json()["rewards"] == [3.0]  # accuracy 1 + 2 x format 1


@pytest.mark.parametrize("weight", ["true", "false", '"2"', "[2]", "null"])
def test_format_weight_accepts_numbers_only(srv, weight: str) -> None:
    body = fill('{"items": [@@], "options": {"format_weight": @@}}', json.dumps(GOOD), weight)
    r = post(srv, "/score", body)
    if weight == "null":  # null means "the server's default"
        assert r.status_code == 200 and r.json()["results"][0]["reward"] == 2.0
        return
    assert only_field(assert_json_4xx(r, 422)) == "options.format_weight"
    r = post(srv, "/get_reward", json.dumps({**SAMPLE, "format_weight": json.loads(weight)}).encode())
    assert only_field(assert_json_4xx(r, 422)) == "format_weight"


def test_integer_format_weight_still_works(srv) -> None:
    r = post(srv, "/score", json.dumps({"items": [GOOD], "options": {"format_weight": 2}}).encode())
    assert r.status_code == 200 and r.json()["results"][0]["reward"] == 3.0


def only_field(details: list[dict]) -> str:
    (detail,) = details
    return detail["field"]


@pytest.mark.parametrize("bad_id", ["true", "false", "1.5", "[1]", '{"a": 1}'])
def test_error_details_never_echo_an_id_the_schema_forbids(srv, bad_id: str) -> None:
    body = fill('{"items": [{"id": @@, "response": 1, "ground_truth": "yes", "task_type": "nope"}]}', bad_id)
    details = assert_json_4xx(post(srv, "/score", body), 422)
    assert all("id" not in d for d in details)
    assert "id" in {d["field"] for d in details}


def test_error_details_echo_a_valid_id(srv) -> None:
    body = json.dumps({"items": [{**GOOD, "id": "r-7", "response": 1}]}).encode()
    (detail,) = assert_json_4xx(post(srv, "/score", body), 422)
    assert (detail["id"], detail["field"]) == ("r-7", "response")


@pytest.mark.parametrize("path", BODY_ROUTES)
@pytest.mark.parametrize("content", [b'{"items": 3, "query": 3, "dtype": 5}', BROKEN["closed brackets x100000"],
                                     BROKEN["invalid UTF-8 byte"], b""])
def test_the_token_is_checked_before_the_body(srv, path: str, content: bytes) -> None:
    for headers in (JSON, {**JSON, "authorization": "Bearer wrong"}):
        r = post(srv, path, content, headers)
        assert_json_4xx(r, 401)
        assert r.json()["error"]["type"] == "unauthorized"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"device": "nodev"}, "device"),
        ({"device": "cuda:7"}, "device"),
        ({"device": "cpu", "dtype": "int3"}, "dtype"),
        ({"dtype": "float64"}, "dtype"),
        ({"model_path": "/nonexistent/checkpoint"}, "model_path"),
    ],
)
def test_reload_errors_name_the_field(srv, body: dict, field: str) -> None:
    details = assert_json_4xx(post(srv, "/admin/reload", json.dumps(body).encode()), 422)
    assert only_field(details) == field
    assert httpx.get(srv.url + "/readyz").status_code == 200  # the old table still serves


def test_offline_rows_too_deep_are_rejected_rows_not_a_crash(tmp_path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text(
        json.dumps({"response": "r", "ground_truth": "1", "task_type": "chart"}) + "\n"
        + '{"response": "r", "ground_truth": ' + deep(5000) + ', "task_type": "chart"}\n'
    )
    first, second = list(iter_rows(path))
    assert first.error is None and first.data["ground_truth"] == "1"
    assert second.data is None and "levels deep" in second.error.message
