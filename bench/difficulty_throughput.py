"""Scoring throughput with the difficulty state off, on with synchronous=FULL, on with NORMAL.

    python bench/difficulty_throughput.py            # ~1 min on 2 loaded cores
    python bench/difficulty_throughput.py --rounds 5

Each configuration is a fresh ``reward-server serve`` process. Two workloads, both yes/no items
carrying ``prompt_id`` (so every item is a durable update when the state is on):

* one-item requests, ``--concurrency`` in flight (OpenRLHF / slime send one sample per request):
  the worst case for per-request durability, where group commit has to earn its keep;
* 512-item requests sent one after another (a verl / TRL step).

Printed: items per second (median of ``--rounds``) and the ratio to the state-off server. On a
loaded shared machine the ratios move by +-30 % between runs; read them as "no measurable drop"
or not, never as speed-ups.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import aiohttp
from run import served


def item(i: int) -> dict:
    return {"response": f"<think>t</think><answer>{'yes' if i % 3 else 'no'}</answer>", "ground_truth": "yes",
            "task_type": "yes_no", "group_id": i // 8, "prompt_id": f"p{i % 500}"}


async def one_item_requests(url: str, total: int, concurrency: int) -> float:
    bodies = [json.dumps({"items": [item(i)]}).encode() for i in range(total)]
    queue = list(range(total))
    headers = {"content-type": "application/json"}

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        async def worker() -> None:
            while queue:
                body = bodies[queue.pop()]
                async with session.post(url + "/score", data=body, headers=headers) as response:
                    assert response.status == 200, await response.text()
                    await response.read()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return total / (time.perf_counter() - started)


async def big_requests(url: str, requests: int, size: int = 512) -> float:
    bodies = [json.dumps({"items": [item(r * size + i) for i in range(size)]}).encode() for r in range(requests)]
    headers = {"content-type": "application/json"}
    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        for body in bodies:
            async with session.post(url + "/score", data=body, headers=headers) as response:
                assert response.status == 200, await response.text()
                await response.read()
        return requests * size / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=2000, help="one-item requests per round")
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--big", type=int, default=20, help="512-item requests per round")
    args = parser.parse_args(argv)
    configs = {"state off": [], "state full": ["full"], "state normal": ["normal"]}
    results: dict[str, tuple[float, float]] = {}
    for name, sync in configs.items():
        extra = []
        if sync:
            extra = ["--state-path", str(Path(tempfile.mkdtemp(prefix="vade-tp-")) / "s.db"),
                     "--state-synchronous", sync[0]]
        with served(extra) as url:
            asyncio.run(one_item_requests(url, 200, 32))  # warm-up
            small = [asyncio.run(one_item_requests(url, args.requests, args.concurrency)) for _ in range(args.rounds)]
            big = [asyncio.run(big_requests(url, args.big)) for _ in range(args.rounds)]
        results[name] = (statistics.median(small), statistics.median(big))
    base_small, base_big = results["state off"]
    print(f"{'server':<14} {'1-item requests, items/s':>26} {'ratio':>6} {'512-item requests, items/s':>28} {'ratio':>6}")
    for name, (small, big) in results.items():
        print(f"{name:<14} {small:>26,.0f} {small / base_small:>6.2f} {big:>28,.0f} {big / base_big:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
