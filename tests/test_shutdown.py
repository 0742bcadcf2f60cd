"""Shutdown of a real ``reward-server serve`` process: SIGTERM drains, a second signal stops at once.

What a load balancer or Kubernetes needs: on SIGTERM readiness turns 503 at once (here: within
100 ms), requests keep being served for ``--drain-seconds``, then the listener closes, every
request in flight still gets its answer, and the process exits 0 within drain + grace.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx
import pytest

from reward_server.service.shutdown import SHUTDOWN_GRACE_SECONDS

SMALL = {"items": [{"response": "<think>t</think><answer>yes</answer>", "ground_truth": "yes", "task_type": "yes_no"}]}


def slow_body(items: int = 2048) -> dict:
    """A batch that takes about a second or more on a CPU, so it is in flight when the listener closes."""
    text = " ".join(f"word{i} dog runs on the beach" for i in range(60))
    return {"items": [{"response": f"{text} {i}", "ground_truth": text, "task_type": "open_ended"}
                      for i in range(items)]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(drain_seconds: float) -> Iterator[tuple[subprocess.Popen, str]]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "reward_server", "serve", "--port", str(port), "--device", "cpu",
         "--drain-seconds", str(drain_seconds), "--log-level", "info"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.1)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


@dataclass
class Load:
    """Clients sending small requests, each on a fresh connection, until told to stop."""

    url: str
    clients: int = 6
    stop_at: float = float("inf")
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _run(self) -> None:
        # One client per thread, a new connection per request ("connection: close"): building an
        # httpx client per request takes long enough on a loaded machine that a request checked
        # before the deadline could connect after the listener has closed.
        with httpx.Client(timeout=60) as client:
            while time.monotonic() < self.stop_at:
                try:
                    r = client.post(self.url + "/score", json=SMALL, headers={"connection": "close"})
                    outcome = None if r.status_code == 200 else f"{r.status_code} {r.text[:200]}"
                except httpx.HTTPError as exc:
                    outcome = f"{type(exc).__name__}: {exc}"
                with self.lock:
                    if outcome is None:
                        self.ok += 1
                    else:
                        self.failures.append(outcome)

    def start(self) -> None:
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(self.clients)]
        for thread in self.threads:
            thread.start()

    def join(self) -> None:
        for thread in self.threads:
            thread.join(timeout=120)


def readiness_after_signal(url: str, sent: threading.Event, out: dict) -> None:
    """Poll /readyz on one keep-alive connection, recording every answer to a request sent after
    the signal with how long after the signal it was sent.

    What counts is when a request was *sent*, not when its answer came back: on a loaded machine an
    answer can take seconds, but a request sent 100 ms after SIGTERM must already see 503.
    """
    with httpx.Client(timeout=10) as client:
        while True:
            asked = time.monotonic()
            r = client.get(url + "/readyz")
            if sent.is_set() and asked >= out["sent"]:
                after = asked - out["sent"]
                out["answers"].append((after, r.status_code, r.json()))
                if (r.status_code == 503 and after >= 0.1) or after > 5:
                    return
            time.sleep(0.002)


def probe_listener(port: int, proc: subprocess.Popen, sent: threading.Event, out: dict) -> None:
    """From the signal on, open a new TCP connection every 20 ms until one is refused while the
    server is still alive; record when (``out["refused_at"]``), then stop. Stops too once the
    process has exited, leaving no record.

    Started with the signal, so it sees the window between the listener closing and the process
    exiting however short the slow batches make it (a probe started only after the load has
    stopped could start after the exit). A refusal counts only if ``proc.poll()`` still finds the
    process running *afterwards*: alive after the refusal means alive at it. Nothing else may wait
    on ``proc`` meanwhile (``poll`` would then answer None for an exited process), so the caller
    joins this thread before ``proc.wait``. Only ``ConnectionRefusedError`` counts: a timeout on a
    loaded machine says nothing about the listener.
    """
    sent.wait()
    while proc.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                pass
        except ConnectionRefusedError:
            refused_at = time.monotonic()
            if proc.poll() is None:
                out["refused_at"] = refused_at
                return
        except OSError:
            pass
        time.sleep(0.02)


def test_sigterm_under_load_drains_without_losing_a_request() -> None:
    drain = 3.0
    with serve(drain) as (proc, url):
        load = Load(url)
        load.start()
        time.sleep(1.0)  # steady load before the signal
        sent, readiness = threading.Event(), {"sent": 0.0, "answers": []}
        poller = threading.Thread(target=readiness_after_signal, args=(url, sent, readiness), daemon=True)
        poller.start()
        listener: dict = {}
        prober = threading.Thread(
            target=probe_listener, args=(int(url.rsplit(":", 1)[1]), proc, sent, listener), daemon=True
        )
        prober.start()
        time.sleep(0.2)
        readiness["sent"] = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        sent.set()
        # Small requests during the drain (stopping a second before it ends, a margin for a loaded
        # machine), and three slow batches started 1.2 s before it ends: the one scoring worker takes
        # them one after the other, so the last ones are still in flight when the listener closes.
        load.stop_at = readiness["sent"] + drain - 1.0
        time.sleep(drain - 1.2)
        slow_results: list[object] = []

        def slow() -> None:
            try:
                slow_results.append(httpx.post(url + "/score", json=slow_body(), timeout=120).status_code)
            except httpx.HTTPError as exc:
                slow_results.append(f"{type(exc).__name__}: {exc}")

        slow_threads = [threading.Thread(target=slow) for _ in range(3)]
        for thread in slow_threads:
            thread.start()
        poller.join(timeout=10)
        load.join()
        # After the drain period the listener is closed while the slow batches are still scored.
        prober.join(timeout=drain + SHUTDOWN_GRACE_SECONDS + 10)  # before proc.wait: see probe_listener
        assert not prober.is_alive()
        for thread in slow_threads:
            thread.join(timeout=120)
        returncode = proc.wait(timeout=drain + SHUTDOWN_GRACE_SECONDS + 10)
        exited = time.monotonic() - readiness["sent"]
        log = proc.stdout.read()

    late = [(after, status, body) for after, status, body in readiness["answers"] if after >= 0.1]
    assert late, readiness["answers"][-3:]
    assert [status for _, status, _ in late] == [503] * len(late), late  # 503 within 100 ms of SIGTERM
    assert late[-1][2]["error"]["type"] == "draining"
    assert load.failures == [], load.failures[:5]
    assert load.ok > 20  # requests were served before and during the drain
    assert slow_results == [200, 200, 200], slow_results  # in flight when the listener closed: all answered
    assert "refused_at" in listener, "new connections were still accepted after the drain period"
    # ... and not before it ended: the listener stays open for the whole drain period
    assert listener["refused_at"] - readiness["sent"] >= drain, listener["refused_at"] - readiness["sent"]
    assert returncode == 0, log
    assert exited < drain + SHUTDOWN_GRACE_SECONDS
    assert "drain period over" in log


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT])
def test_a_second_signal_stops_at_once(second: signal.Signals) -> None:
    with serve(drain_seconds=120) as (proc, url):
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        while httpx.get(url + "/readyz", timeout=5).status_code != 503:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert httpx.post(url + "/score", json=SMALL, timeout=30).status_code == 200  # still serving
        assert "\nreward_ready 0.0\n" in httpx.get(url + "/metrics", timeout=30).text  # as /readyz says
        started = time.monotonic()
        proc.send_signal(second)
        proc.wait(timeout=20)
        assert time.monotonic() - started < 10  # not the 120 s drain


def test_sigint_skips_the_drain_period() -> None:
    """Ctrl-C at a terminal: nobody routes traffic to this process, so it stops (gracefully) now."""
    with serve(drain_seconds=120) as (proc, _url):
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        assert time.monotonic() - started < 20
