"""The difficulty API through the real server: durability across kill -9, errors, export, metrics."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from serving import running_server

NO_DECAY = {"difficulty_local_decay": 1.0, "difficulty_stale_half_life_items": 0.0}


def item(prompt: str, ok: bool, group: int = 0, task: str = "yes_no") -> dict:
    return {"response": f"<think>t</think><answer>{'yes' if ok else 'no'}</answer>", "ground_truth": "yes",
            "task_type": task, "group_id": group, "prompt_id": prompt}


def start(state: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "reward_server", "serve", "--port", str(port), "--log-level", "warning",
         "--state-path", str(state), "--difficulty-local-decay", "1", "--difficulty-stale-half-life-items", "0"],
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, "server exited"
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "server did not become ready"
        time.sleep(0.2)


def test_kill_9_between_batches_keeps_every_acknowledged_update(tmp_path: Path) -> None:
    state = tmp_path / "nested" / "state.db"  # created on first use, directory included
    expected = {"p0": [0, 0], "p1": [0, 0], "p2": [0, 0]}  # [n, successes]
    for round_ in range(3):
        proc, url = start(state)
        try:
            if round_:
                for pid, (n, ok) in expected.items():  # everything acknowledged before the kill is there
                    got = httpx.get(f"{url}/v1/prompts/{pid}").json()
                    assert (got["n"], got["successes"]) == (n, ok)
            for batch in range(4):
                items = [item(f"p{(batch + i) % 3}", (i * batch + round_) % 2 == 0, i) for i in range(7)]
                httpx.post(url + "/score", json={"items": items}).raise_for_status()
                for it in items:
                    expected[it["prompt_id"]][0] += 1
                    expected[it["prompt_id"]][1] += "yes" in it["response"]
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    proc, url = start(state)
    try:
        for pid, (n, ok) in expected.items():
            got = httpx.get(f"{url}/v1/prompts/{pid}").json()
            assert (got["n"], got["successes"], got["alpha"], got["beta"]) == (n, ok, 1.0 + ok, 1.0 + n - ok)
    finally:
        proc.terminate()
        proc.wait()


@pytest.fixture(scope="module")
def diff_server(default_table, tmp_path_factory):
    path = tmp_path_factory.mktemp("difficulty") / "state.db"
    with running_server(default_table, state_path=str(path), **NO_DECAY) as srv:
        yield srv


def test_updates_per_item_from_pieces_and_concurrent_requests(diff_server) -> None:
    url = diff_server.url
    # one group sent one sample per request (OpenRLHF, slime), concurrently: nothing lost
    outcomes = [i % 4 != 0 for i in range(40)]
    threads = [threading.Thread(target=lambda ok=ok: httpx.post(url + "/score", json={"items": [item("one", ok)]},
                                                              timeout=60).raise_for_status()) for ok in outcomes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = httpx.get(url + "/v1/prompts/one").json()
    assert (got["n"], got["successes"]) == (40, sum(outcomes))
    assert got["alpha"] == 1 + sum(outcomes) and got["beta"] == 1 + 40 - sum(outcomes)
    assert got["estimated_p"] == pytest.approx(got["alpha"] / (got["alpha"] + got["beta"]))


def test_grounding_threshold_and_integer_ids(diff_server) -> None:
    url = diff_server.url
    truth = [0, 0, 10, 10]
    items = [  # IoU 1.0, 0.25, 0.0
        {"response": "<answer>[0, 0, 10, 10]</answer>", "ground_truth": truth, "task_type": "grounding", "prompt_id": 7},
        {"response": "<answer>[0, 0, 5, 5]</answer>", "ground_truth": truth, "task_type": "grounding", "prompt_id": "7"},
        {"response": "<answer>[20, 20, 30, 30]</answer>", "ground_truth": truth, "task_type": "grounding",
         "prompt_id": 7},
    ]
    rows = httpx.post(url + "/score", json={"items": items}).json()["results"]
    assert [r["prompt_id"] for r in rows] == [7, "7", 7]
    got = httpx.get(url + "/v1/prompts/7").json()
    assert (got["n"], got["successes"]) == (3, 1)  # only IoU >= 0.5 counts as correct


def test_rewards_do_not_depend_on_state(diff_server, default_table) -> None:
    items = [item("same", i % 2 == 0, 0) for i in range(6)]
    with_state = httpx.post(diff_server.url + "/score", json={"items": items}).json()["results"]
    with running_server(default_table) as plain:
        without = httpx.post(plain.url + "/score", json={"items": items}).json()["results"]
    assert [r["reward"] for r in with_state] == [r["reward"] for r in without]


def test_sample_export_and_errors(diff_server) -> None:
    url = diff_server.url
    httpx.post(url + "/score", json={"items": [item(f"s{i}", True) for i in range(3)]}).raise_for_status()
    one = httpx.post(url + "/v1/sample", json={"candidates": ["s0", "s1", "s2", "new"], "k": 3, "seed": 5}).json()
    assert one == httpx.post(url + "/v1/sample", json={"candidates": ["s0", "s1", "s2", "new"], "k": 3,
                                                       "seed": 5}).json()
    assert len(set(one["prompt_ids"])) == 3
    assert httpx.put(url + "/v1/pools/train", json={"prompt_ids": ["s0", "s1", 3]}).json() == {
        "pool": "train", "size": 3, "job": "default"}
    assert sorted(httpx.post(url + "/v1/sample", json={"pool": "train", "k": 3}).json()["prompt_ids"]) == [
        "3", "s0", "s1"]

    unknown = httpx.get(url + "/v1/prompts/never-seen")
    assert unknown.status_code == 404 and unknown.json()["error"]["type"] == "unknown_prompt"
    too_many = httpx.post(url + "/v1/sample", json={"candidates": ["s0", "s0", "s1"], "k": 3})
    assert too_many.status_code == 422 and too_many.json()["error"]["details"][0]["field"] == "k"
    assert httpx.post(url + "/v1/sample", json={"pool": "train", "k": 4}).status_code == 422
    assert httpx.post(url + "/v1/sample", json={"pool": "nope", "k": 1}).status_code == 404
    assert httpx.post(url + "/v1/sample", json={"k": 1}).status_code == 422
    assert httpx.post(url + "/v1/sample", json={"candidates": ["a"], "k": 0}).status_code == 422
    bad = httpx.post(url + "/score", json={"items": [dict(item("x", True), prompt_id=" ")]})
    assert bad.status_code == 422 and bad.json()["error"]["details"][0] == {
        "item": 0, "field": "prompt_id", "message": "must not be empty or blank"}
    bad = httpx.post(url + "/score", json={"items": [dict(item("x", True), prompt_id=[1])]})
    assert bad.status_code == 422 and bad.json()["error"]["details"][0]["field"] == "prompt_id"

    lines = [json.loads(line) for line in httpx.get(url + "/v1/prompts").text.splitlines()]
    ids = [row["prompt_id"] for row in lines]
    assert ids == sorted(ids) and {"s0", "s1", "s2"} <= set(ids)
    assert all({"alpha", "beta", "n", "estimated_p", "last_update"} <= set(row) for row in lines)

    metrics = httpx.get(url + "/metrics").text
    assert f"reward_difficulty_prompts {float(len(lines))}" in metrics
    assert 'reward_difficulty_estimated_p_bucket{le="+Inf"} ' + str(float(len(lines))) in metrics
    assert "reward_difficulty_informative_share " in metrics


def test_disabled_without_state_path(server) -> None:
    answer = httpx.get(server.url + "/v1/prompts/x")
    assert answer.status_code == 404 and answer.json()["error"]["type"] == "difficulty_disabled"
    assert httpx.post(server.url + "/score", json={"items": [item("x", True)]}).status_code == 200


def test_report_reads_a_state_export(diff_server, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from reward_server.cli import main

    items = [item("r-solved", True) for _ in range(8)] + [item("r-mixed", i % 2 == 0) for i in range(8)]
    httpx.post(diff_server.url + "/score", json={"items": items}).raise_for_status()
    export = tmp_path / "state.jsonl"
    export.write_text(httpx.get(diff_server.url + "/v1/prompts").text)
    rows = export.read_text().count("\n")
    assert main(["report", str(export), "--out-dir", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "difficulty.json").read_text())
    assert report["prompts"] == rows and sum(report["estimated_p_buckets"].values()) == rows
    assert report["jobs"] == ["default"] and "by_job" not in report
    assert (tmp_path / "out" / "difficulty_p.png").stat().st_size > 1000
    markdown = (tmp_path / "out" / "DIFFICULTY.md").read_text()
    assert "informative" in markdown and markdown.startswith(f"# Prompt difficulty: {export} (job default)\n")


def test_report_of_several_jobs_reports_each(diff_server, tmp_path: Path) -> None:
    """Exports of two jobs (the same prompt ids) and one from before jobs, in one file: reported
    together and per job, each prompt id of each job its own posterior."""
    pytest.importorskip("matplotlib")
    from reward_server.cli import main

    for job, answers in (("rep-a", [True] * 10), ("rep-b", [True, False] * 4)):
        body = {"items": [item("rep-1", ok) for ok in answers] + [item("rep-2", False)], "job": job}
        httpx.post(diff_server.url + "/score", json=body).raise_for_status()
    legacy = {"prompt_id": "rep-1", "alpha": 1.0, "beta": 1.0, "n": 0, "successes": 0, "estimated_p": 0.5}
    export = tmp_path / "jobs.jsonl"
    export.write_text(httpx.get(diff_server.url + "/v1/prompts?job=rep-b").text + json.dumps(legacy) + "\n"
                      + httpx.get(diff_server.url + "/v1/prompts?job=rep-a").text)
    assert main(["report", str(export), "--out-dir", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "difficulty.json").read_text())
    assert report["jobs"] == ["rep-a", "rep-b"] and report["prompts"] == 5 and report["observations"] == 20
    assert {job: (part["prompts"], part["observations"]) for job, part in report["by_job"].items()} == {
        "(no job)": (1, 0), "rep-a": (2, 11), "rep-b": (2, 9)}
    # rep-a: rep-1 Beta(11, 1) (solved, p 0.917), rep-2 Beta(1, 2); rep-b: rep-1 Beta(5, 5), rep-2 Beta(1, 2)
    assert report["by_job"]["rep-a"]["estimated_p_quantiles"]["0.5"] == pytest.approx((11 / 12 + 1 / 3) / 2)
    assert report["by_job"]["rep-b"]["estimated_p_quantiles"]["0.5"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    markdown = (tmp_path / "out" / "DIFFICULTY.md").read_text()
    assert markdown.startswith(f"# Prompt difficulty: {export} (3 jobs)\n")
    assert "| rep-a | 2 | 11 | 50.0% | 0.625 |" in markdown and "| rep-b | 2 | 9 | 100.0% | 0.417 |" in markdown


def test_openrlhf_labels_carry_prompt_id(diff_server) -> None:
    labels = [json.dumps({"ground_truth": "yes", "task_type": "yes_no", "prompt_id": "orl-1"})] * 2
    body = {"query": ["Q: <answer>yes</answer>", "Q: <answer>no</answer>"], "prompts": ["Q: "] * 2, "labels": labels}
    httpx.post(diff_server.url + "/get_reward", json=body).raise_for_status()
    got = httpx.get(diff_server.url + "/v1/prompts/orl-1").json()
    assert (got["n"], got["successes"]) == (2, 1)
    body["labels"] = [json.dumps({"ground_truth": "yes", "task_type": "yes_no", "prompt_id": 1.5})] * 2
    assert httpx.post(diff_server.url + "/get_reward", json=body).status_code == 422


def counts(url: str, prompt: str, job: str | None = None, **kwargs) -> tuple[int, int] | None:
    """(n, successes) of a prompt for a job (None: never scored by that job)."""
    answer = httpx.get(f"{url}/v1/prompts/{prompt}", params={"job": job} if job else None, **kwargs)
    if answer.status_code == 404:
        return None
    answer.raise_for_status()
    return answer.json()["n"], answer.json()["successes"]


def test_each_job_has_its_own_posteriors_pools_and_export(default_table, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({"token-of-a": {"job": "a", "scopes": ["score", "state"]},
                                  "token-any1": {"job": "b", "scopes": ["score", "state"]}}))
    a = {"authorization": "Bearer token-of-a"}
    b = {"authorization": "Bearer token-any1"}
    with running_server(default_table, state_path=str(tmp_path / "state.db"), api_token="shared-token",
                        tokens_file=str(tokens), **NO_DECAY) as srv:
        url, shared = srv.url, {"authorization": "Bearer shared-token"}
        # the same prompt ids, three jobs: by the token, by the body, by ?job= and by the header
        httpx.post(url + "/score", json={"items": [item("p", True), item("p", True)]}, headers=a).raise_for_status()
        httpx.post(url + "/score", json={"items": [item("p", False)], "job": "b"}, headers=b).raise_for_status()
        httpx.post(url + "/score?job=c", json={"items": [item("p", True), item("p", False), item("q", False)]},
                   headers=shared).raise_for_status()
        httpx.post(url + "/score", json={"items": [item("q", True)]},
                   headers={**shared, "x-reward-job": "c"}).raise_for_status()
        assert counts(url, "p", headers=a) == (2, 2)  # a job's token answers for its job
        assert counts(url, "p", "a", headers=shared) == (2, 2)
        assert counts(url, "p", "b", headers=shared) == (1, 0)
        assert counts(url, "p", "c", headers=shared) == (2, 1) and counts(url, "q", "c", headers=shared) == (2, 1)
        assert counts(url, "p", headers=shared) is None  # the default job scored nothing
        assert counts(url, "q", "a", headers=shared) is None
        other = httpx.get(url + "/v1/prompts/p", params={"job": "b"}, headers=a)
        assert other.status_code == 403 and other.json()["error"]["details"][0]["field"] == "job"
        assert httpx.get(url + "/v1/prompts", params={"job": "b"}, headers=a).status_code == 403
        assert httpx.get(url + "/v1/prompts/p", params={"job": "no way"}, headers=shared).status_code == 422

        rows = [json.loads(line) for line in httpx.get(url + "/v1/prompts?job=c", headers=shared).text.splitlines()]
        assert [(r["job"], r["prompt_id"], r["n"], r["successes"]) for r in rows] == [("c", "p", 2, 1), ("c", "q", 2, 1)]
        rows = [json.loads(line) for line in httpx.get(url + "/v1/prompts", headers=a).text.splitlines()]
        assert [(r["job"], r["prompt_id"], r["n"]) for r in rows] == [("a", "p", 2)]
        assert httpx.get(url + "/v1/prompts", headers=shared).text == ""  # the default job's: empty

        # pools are a job's too: registered by a (token), invisible to b, sampled by a with body or query job
        put = httpx.put(url + "/v1/pools/train", json={"prompt_ids": ["p", "q", "r"]}, headers=a)
        assert put.json() == {"pool": "train", "size": 3, "job": "a"}
        assert httpx.put(url + "/v1/pools/train", json={"prompt_ids": ["p"], "job": "b"}, headers=a).status_code == 403
        missing = httpx.post(url + "/v1/sample", json={"pool": "train", "k": 1}, headers=b)
        assert missing.status_code == 404 and "job 'b'" in missing.json()["error"]["message"]
        sampled = httpx.post(url + "/v1/sample", json={"pool": "train", "k": 3, "seed": 1, "job": "a"}, headers=shared)
        assert sampled.json()["job"] == "a" and sorted(sampled.json()["prompt_ids"]) == ["p", "q", "r"]
        assert httpx.post(url + "/v1/sample?job=a", json={"pool": "train", "k": 3}, headers=shared).status_code == 200


def test_an_idempotency_key_counts_a_retried_request_once(diff_server) -> None:
    url = diff_server.url
    body = {"items": [item("idem", True), item("idem", False), item("idem", True)]}
    once = {"Idempotency-Key": "3f2b6c1e-retry-me"}
    for _ in range(3):  # the request and two retries of it, with its one key
        assert httpx.post(url + "/score", json=body, headers=once).status_code == 200
    assert counts(url, "idem") == (3, 2)
    httpx.post(url + "/score", json=body, headers={"Idempotency-Key": "another request"}).raise_for_status()
    assert counts(url, "idem") == (6, 4)  # two keys: two requests
    httpx.post(url + "/score", json=body).raise_for_status()
    httpx.post(url + "/score", json=body).raise_for_status()
    assert counts(url, "idem") == (12, 8)  # no key: every request counts, as before keys existed
    # the same key as another job is another request (keys are scoped by job)
    httpx.post(url + "/score?job=other", json=body, headers=once).raise_for_status()
    assert counts(url, "idem", "other") == (3, 2) and counts(url, "idem") == (12, 8)
    # /get_reward takes the header too
    labels = [json.dumps({"ground_truth": "yes", "task_type": "yes_no", "prompt_id": "idem-orl"})] * 2
    orl = {"query": ["Q: <answer>yes</answer>", "Q: <answer>no</answer>"], "prompts": ["Q: "] * 2, "labels": labels}
    for _ in range(2):
        httpx.post(url + "/get_reward", json=orl, headers={"Idempotency-Key": "orl-1"}).raise_for_status()
    assert counts(url, "idem-orl") == (2, 1)
    metrics = httpx.get(url + "/metrics").text
    assert "reward_difficulty_replays_total 3.0" in metrics


@pytest.mark.parametrize(("headers", "message"), [
    ([("Idempotency-Key", "")], "must be 1-128 printable ASCII characters (got 0 characters)"),
    ([("Idempotency-Key", "k" * 129)], "must be 1-128 printable ASCII characters (got 129 characters)"),
    ([("Idempotency-Key", "tab\there")], "must be 1-128 printable ASCII characters (got 8 characters)"),
    ([("Idempotency-Key", "clé".encode("latin-1"))],
     "must be 1-128 printable ASCII characters (got 3 characters, not all ASCII)"),
    ([("Idempotency-Key", "one"), ("Idempotency-Key", "two")], "sent 2 times; send one key per request"),
])
def test_a_bad_idempotency_key_is_a_422_naming_the_header(diff_server, server, headers, message) -> None:
    for url in (diff_server.url, server.url):  # with state or without: the same answer
        before = counts(diff_server.url, "bad-key")
        answer = httpx.post(url + "/score", json={"items": [item("bad-key", True)]}, headers=headers)
        assert answer.status_code == 422
        assert answer.json()["error"]["details"] == [{"item": None, "field": "Idempotency-Key", "message": message}]
        assert counts(diff_server.url, "bad-key") == before  # nothing scored, nothing counted
    assert httpx.post(diff_server.url + "/score", json={"items": [item("bad-key", True)]},
                      headers={"Idempotency-Key": "k" * 128}).status_code == 200
