"""``reward-server score --url``: the service's defaults and limits, 413 splitting with the right
line numbers, 422 rows skipped with ``--skip-bad``, ``Retry-After`` handling.

Most tests talk to a fake service (``httpx.MockTransport``) whose answers are computed from the
request, so every number is known; one starts the real service with a non-default format weight.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from reward_server.cli import main
from reward_server.offline import backends
from reward_server.offline.synthetic import synthetic_rows, write_jsonl

URL = "http://fake-reward-service"


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class FakeService:
    """``/v1/info`` with the given defaults and limits; ``/score`` answers ``reward = len(response)``
    (format 1), refuses more than ``max_items`` items with 413 and a response ``"BAD"`` with 422."""

    def __init__(self, *, format_weight=0.25, bmas_reduction="mean", max_items=3, max_chars=50, refuse_over=2,
                 first_status=None, retry_after=None):
        self.info = {
            "content_hash": "fake-table", "source": "fake",
            "defaults": {"format_weight": format_weight, "bmas_reduction": bmas_reduction},
            "limits": {"max_items_per_request": max_items, "max_chars_per_text": max_chars, "max_body_bytes": 1 << 20},
        }
        self.refuse_over = refuse_over
        self.first_status, self.retry_after = first_status, retry_after
        self.requests: list[dict] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/info":
            return httpx.Response(200, json=self.info)
        body = json.loads(request.content)
        self.requests.append(body)
        if self.first_status is not None and len(self.requests) == 1:
            return httpx.Response(self.first_status, headers={"Retry-After": self.retry_after}, json={})
        items = body["items"]
        if len(items) > self.refuse_over:
            return httpx.Response(413, json={"error": {"code": "too_many_items", "message": "too many"}})
        bad = [{"item": i, "field": "response", "message": "is not acceptable here"}
               for i, item in enumerate(items) if item["response"] == "BAD"]
        if bad:
            return httpx.Response(422, json={"error": {"code": "invalid_item", "message": "bad", "details": bad}})
        w = body["options"]["format_weight"]
        results = [{"reward": len(item["response"]) + w, "accuracy": float(len(item["response"])), "format": 1.0}
                   for item in items]
        return httpx.Response(200, json={"results": results, "table": {"content_hash": "fake-table"}})


@pytest.fixture
def fake(monkeypatch):
    def install(**kwargs) -> FakeService:
        service = FakeService(**kwargs)
        monkeypatch.setattr(backends.RemoteScorer, "transport", httpx.MockTransport(service))
        return service

    return install


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr(backends.RemoteScorer, "sleep", staticmethod(slept.append))  # not time.sleep: other threads sleep too
    return slept


def _file(tmp_path: Path, responses: list[str]) -> Path:
    src = tmp_path / "in.jsonl"
    write_jsonl(src, [{"id": i, "response": r, "ground_truth": "yes", "task_type": "yes_no"}
                      for i, r in enumerate(responses)])
    return src


def test_413_halving_keeps_line_numbers_and_422_rows_are_skipped(tmp_path, fake, capsys):
    service = fake()
    src = _file(tmp_path, ["a", "bb", "ccc", "BAD", "eeeee", "ffffff"])  # the bad row is line 4
    out = tmp_path / "out.jsonl"
    assert main(["score", str(src), str(out), "--url", URL, "--batch-size", "6"]) == 1
    err = capsys.readouterr().err
    assert f"{src}:4: field 'response': is not acceptable here (rejected by the service)" in err
    assert "3 rows before it are scored and kept" in err
    # batches never exceed the service's max_items_per_request (3); a 413 halves them (1 + 2)
    assert max(len(r["items"]) for r in service.requests) == 3
    assert sorted({len(r["items"]) for r in service.requests if len(r["items"]) <= 2}) == [1, 2]

    assert main(["score", str(src), str(out), "--url", URL, "--batch-size", "6", "--skip-bad"]) == 0
    assert "skipped 1 bad rows" in capsys.readouterr().out
    got = _read(out)
    assert [r["id"] for r in got] == [0, 1, 2, 4, 5]
    assert [r["reward"] for r in got] == [1.25, 2.25, 3.25, 5.25, 6.25]  # the service's format weight 0.25
    rejected = _read(tmp_path / "out.jsonl.rejected.jsonl")
    assert [(r["line"], r["field"]) for r in rejected] == [(4, "response")]
    assert json.loads(rejected[0]["row"])["id"] == 3


def test_service_defaults_and_limits_unless_flags_are_given(tmp_path, fake, capsys):
    service = fake(format_weight=0.25, bmas_reduction="mean", max_chars=50, refuse_over=100)
    src = _file(tmp_path, ["x" * 10, "y" * 60, "z" * 50])  # 60 > the service's 50-character limit
    out = tmp_path / "out.jsonl"
    assert main(["score", str(src), str(out), "--url", URL, "--skip-bad"]) == 0
    assert {json.dumps(r["options"], sort_keys=True) for r in service.requests} == {
        json.dumps({"bmas_reduction": "mean", "format_weight": 0.25}, sort_keys=True)  # no profiles: not sent
    }
    rejected = _read(tmp_path / "out.jsonl.rejected.jsonl")
    assert [(r["line"], r["field"]) for r in rejected] == [(2, "response")]
    assert "the limit is 50" in rejected[0]["message"]
    meta = json.loads((tmp_path / "out.jsonl.meta.json").read_text())
    assert meta["options"] == {"format_weight": 0.25, "bmas_reduction": "mean", "profile": "mixed-r1"}
    assert [r["reward"] for r in _read(out)] == [10.25, 50.25]

    service.requests.clear()
    out2 = tmp_path / "out2.jsonl"
    assert main(["score", str(src), str(out2), "--url", URL, "--skip-bad", "--format-weight", "2"]) == 0
    assert {r["options"]["format_weight"] for r in service.requests} == {2.0}
    assert {r["options"]["bmas_reduction"] for r in service.requests} == {"mean"}
    assert [r["reward"] for r in _read(out2)] == [12.0, 52.0]


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [("Wed, 21 Oct 2015 07:28:00 GMT", 0.5), ("2", 2.0), ("-3", 0.5), ("nan", 0.5), ("3600", 60.0)],
)
def test_retry_after_seconds_or_our_own_backoff(tmp_path, fake, sleeps, retry_after, expected):
    fake(first_status=503, retry_after=retry_after, refuse_over=100)
    src = _file(tmp_path, ["a", "bb"])
    out = tmp_path / "out.jsonl"
    assert main(["score", str(src), str(out), "--url", URL]) == 0
    assert sleeps == [expected]
    assert [r["reward"] for r in _read(out)] == [1.25, 2.25]


def test_real_service_format_weight_applies_without_the_flag(tmp_path, default_table, monkeypatch):
    from serving import running_server

    monkeypatch.setattr(backends, "_cached_table", lambda *args: default_table)
    src = tmp_path / "in.jsonl"
    write_jsonl(src, synthetic_rows(6, 2, seed=5))
    out = tmp_path / "out.jsonl"
    with running_server(default_table, format_weight=0.5, max_items_per_request=5) as srv:
        assert main(["score", str(src), str(out), "--url", srv.url, "--batch-size", "12"]) == 0
    rows = _read(out)
    assert len(rows) == 12 and any(r["format"] == 1.0 for r in rows)
    for r in rows:
        assert r["reward"] == pytest.approx(r["accuracy"] + 0.5 * r["format"], abs=1e-6)
    assert json.loads((tmp_path / "out.jsonl.meta.json").read_text())["options"]["format_weight"] == 0.5
