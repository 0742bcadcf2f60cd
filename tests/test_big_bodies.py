"""A small body with a huge list must not freeze the server (issue: a 3 MB body of a million ``{}``
items took 18-25 s to refuse, blocked /healthz for as long and grew the process by 800 MB).

The list is counted on the raw bytes before any model is built, so it is refused at once, and
large bodies are validated off the event loop: a real server in its own process (its RSS is its
own), /healthz probed from a thread all along."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from serving import server_process

JSON = {"content-type": "application/json"}
MILLION = 1_000_000


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def health_probe(url: str, stop: threading.Event, worst: list[float]) -> None:
    with httpx.Client(timeout=30) as client:
        while not stop.is_set():
            started = time.perf_counter()
            assert client.get(url + "/healthz").status_code == 200
            worst.append(time.perf_counter() - started)
            time.sleep(0.01)


BODIES = {
    "/score": b'{"items": [' + b",".join([b"{}"] * MILLION) + b"]}",
    "/get_reward": b'{"query": [' + b",".join([b'""'] * MILLION) + b'], "labels": []}',
    "/slime": b"[" + b",".join([b"{}"] * MILLION) + b"]",
}


@pytest.mark.parametrize("path", list(BODIES))
def test_a_million_tiny_items_are_refused_at_once(path: str) -> None:
    with server_process() as srv:
        url, pid = srv.url, srv.pid
        with httpx.Client(timeout=30) as client:  # warm: first requests allocate what the server keeps
            client.post(url + path, content=BODIES[path][:200] + b"]}", headers=JSON)
        before = rss_mib(pid)
        stop, worst = threading.Event(), []
        probe = threading.Thread(target=health_probe, args=(url, stop, worst), daemon=True)
        probe.start()
        time.sleep(0.3)
        started = time.perf_counter()
        answer = httpx.post(url + path, content=BODIES[path], headers=JSON, timeout=60)
        took = time.perf_counter() - started
        time.sleep(0.3)
        stop.set()
        probe.join(timeout=30)
        after = rss_mib(pid)
    error = answer.json()["error"]
    assert answer.status_code == 413 and error["type"] == "too_many_items", answer.text[:300]
    assert "the limit is 8192" in error["message"]
    assert took < 1.0, took
    assert max(worst) < 0.1, max(worst)  # /healthz never waited for the big body
    assert after - before < 50, (before, after)


def test_slime_reads_json_only() -> None:
    """/slime refuses text/plain and a missing Content-Type as every body route does (422, field
    body): a browser's cross-site simple request must not reach scoring."""
    body = b'{"prompt": "p", "response": "yes", "label": {"ground_truth": "yes", "task_type": "yes_no"}}'
    with server_process() as srv:
        url = srv.url
        for headers in ({"content-type": "text/plain"}, {}):
            answer = httpx.post(url + "/slime", content=body, headers=headers)
            error = answer.json()["error"]
            assert answer.status_code == 422 and error["details"][0]["field"] == "body", answer.text
        assert httpx.post(url + "/slime", content=body, headers=JSON).json()["reward"] == 1.0
