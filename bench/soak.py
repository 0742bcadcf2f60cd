"""Soak test: N aiohttp clients post mixed batches to a real server for M minutes.

    python bench/soak.py                           # 8 clients, 1 minute, its own server, every family
    python bench/soak.py --families paper          # only Mixed-R1's five task types
    python bench/soak.py --clients 64 --minutes 5  # the figures of issue 10
    python bench/soak.py --url http://127.0.0.1:8000 --pid 1234   # a server you started

Prints requests, items, errors (by kind), lost items, latency p50/p99 and the server's resident
memory (RSS, its child processes included: the math workers) at the start, middle and end: a leak
shows as RSS that keeps growing after warm-up. Requests alternate between two jobs (``soak-a``,
``soak-b``), so the per-job queues, metrics and state are part of what is soaked.
Bounded by time (``--minutes``) and by count (``--max-requests``), whichever comes first, and only
ever talks to 127.0.0.1. Each response is checked: 200, one finite reward per item.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import aiohttp
import workloads


def _own_rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (the math pool's workers, a resource tracker), from /proc."""
    kids: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        kids.setdefault(int(fields[1]), []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in kids.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def rss_mib(pid: int) -> float | None:
    """Resident memory of ``pid`` and its descendants from /proc (Linux); None where unreadable."""
    own = _own_rss_kib(pid)
    if own is None:
        return None
    return (own + sum(_own_rss_kib(child) or 0 for child in _children(pid))) / 1024


@contextlib.contextmanager
def own_server(extra: list[str]) -> Iterator[tuple[str, int]]:
    """``reward-server serve`` in its own process on a free loopback port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "reward_server", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--log-level", "warning", "--drain-seconds", "0", *extra],
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise SystemExit("soak: the reward server exited during start-up")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if time.monotonic() > deadline:
                raise SystemExit("soak: the reward server did not start")
            time.sleep(0.2)
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def bodies(count: int, items: int, families: str) -> list[tuple[bytes, int]]:
    """Pre-built request bodies (mixed task types, GRPO groups, two jobs taking turns), so the
    client measures the server."""
    out = []
    for salt in range(count):
        batch = workloads.mixed(items=items, seed=7, salt=salt, families=families)
        payload = {"job": ("soak-a", "soak-b")[salt % 2],
                   "items": [{"id": f"{salt}-{i}", "response": it.response, "ground_truth": it.ground_truth,
                              "task_type": it.task_type, "group_id": it.group_id} for i, it in enumerate(batch)]}
        out.append((json.dumps(payload).encode(), items))
    return out


class Soak:
    def __init__(self, url: str, pid: int | None, clients: int, seconds: float, max_requests: int,
                 pool: list[tuple[bytes, int]]) -> None:
        self.url, self.pid, self.clients = url, pid, clients
        self.seconds, self.max_requests, self.pool = seconds, max_requests, pool
        self.sent = 0
        self.items_ok = 0
        self.items_lost = 0
        self.latencies: list[float] = []
        self.errors: Counter[str] = Counter()
        self.rss: dict[str, float | None] = {}

    async def _client(self, session: aiohttp.ClientSession, seed: int, stop_at: float) -> None:
        rng = random.Random(seed)
        while time.monotonic() < stop_at and self.sent < self.max_requests:
            self.sent += 1
            body, count = rng.choice(self.pool)
            started = time.perf_counter()
            try:
                async with session.post(self.url + "/score", data=body,
                                        headers={"content-type": "application/json"}) as response:
                    payload = await response.read()
                    status = response.status
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                self.errors[type(exc).__name__] += 1
                self.items_lost += count
                continue
            self.latencies.append(time.perf_counter() - started)
            if status != 200:
                self.errors[f"HTTP {status}"] += 1
                self.items_lost += count
                continue
            results = json.loads(payload)["results"]
            if len(results) != count or not all(math.isfinite(r["reward"]) for r in results):
                self.errors["bad result"] += 1
                self.items_lost += count
                continue
            self.items_ok += count

    async def _sample_rss(self, started: float, stop_at: float) -> None:
        self.rss["start"] = rss_mib(self.pid) if self.pid else None
        half = started + (stop_at - started) / 2
        while time.monotonic() < half and self.sent < self.max_requests:
            await asyncio.sleep(0.2)
        self.rss["middle"] = rss_mib(self.pid) if self.pid else None

    async def run(self) -> float:
        timeout = aiohttp.ClientTimeout(total=120)
        connector = aiohttp.TCPConnector(limit=self.clients)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            # Warm-up (first batch, caches) before RSS "start" and before the clock.
            async with session.post(self.url + "/score", data=self.pool[0][0],
                                    headers={"content-type": "application/json"}) as response:
                if response.status != 200:
                    raise SystemExit(f"soak: warm-up request failed: HTTP {response.status} {await response.text()}")
            started = time.monotonic()
            stop_at = started + self.seconds
            await asyncio.gather(self._sample_rss(started, stop_at),
                                 *(self._client(session, seed, stop_at) for seed in range(self.clients)))
            elapsed = time.monotonic() - started
        self.rss["end"] = rss_mib(self.pid) if self.pid else None
        return elapsed

    def report(self, elapsed: float) -> None:
        lat = sorted(self.latencies)

        def pct(q: float) -> float:
            return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000 if lat else float("nan")

        def mib(key: str) -> str:
            value = self.rss.get(key)
            return "n/a" if value is None else f"{value:.0f} MiB"

        errors = sum(self.errors.values())
        print(f"clients {self.clients}, {elapsed:.1f} s, {self.pool[0][1]} items/request")
        print(f"requests {self.sent} ({self.sent / elapsed:.1f}/s), items scored {self.items_ok} "
              f"({self.items_ok / elapsed:.0f}/s), items lost {self.items_lost}")
        print(f"errors {errors}" + (f" {dict(self.errors)}" if errors else ""))
        print(f"latency p50 {pct(0.50):.1f} ms, p99 {pct(0.99):.1f} ms, max {pct(1.0):.1f} ms")
        print(f"server RSS start {mib('start')}, middle {mib('middle')}, end {mib('end')}")
        if self.latencies:
            print(f"(mean {statistics.fmean(self.latencies) * 1000:.1f} ms over {len(self.latencies)} answered)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--max-requests", type=int, default=1_000_000, help="stop after this many requests")
    parser.add_argument("--items", type=int, default=16, help="items per request")
    parser.add_argument("--bodies", type=int, default=64, help="distinct pre-built request bodies")
    parser.add_argument("--families", choices=("all", "paper"), default="all",
                        help="every registered family (math needs the [math] extra) or the paper's five")
    parser.add_argument("--url", help="a running server on 127.0.0.1 (default: start one)")
    parser.add_argument("--pid", type=int, help="its process id, for RSS (with --url)")
    parser.add_argument("serve_args", nargs="*", help="extra `reward-server serve` flags (after --)")
    args = parser.parse_args()
    if not (1 <= args.clients <= 1024 and 0 < args.minutes <= 24 * 60 and args.max_requests >= 1):
        parser.error("--clients 1..1024, --minutes > 0 (at most a day), --max-requests >= 1")
    pool = bodies(args.bodies, args.items, args.families)
    with contextlib.ExitStack() as stack:
        if args.url:
            if urlparse(args.url).hostname not in ("127.0.0.1", "localhost"):
                parser.error("--url must be on 127.0.0.1: this load generator never leaves the machine")
            url, pid = args.url.rstrip("/"), args.pid
        else:
            url, pid = stack.enter_context(own_server(args.serve_args))
        soak = Soak(url, pid, args.clients, args.minutes * 60, args.max_requests, pool)
        elapsed = asyncio.run(soak.run())
        soak.report(elapsed)


if __name__ == "__main__":
    main()
