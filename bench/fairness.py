"""Two training jobs on one service (SPEC §15): does a small job stay fast beside a flooding one,
and does fairness cost throughput? And how long does a Qwen2.5-VL-shaped table take to load on
first use?

    python bench/fairness.py               # ~2 min on 2 CPU cores
    python bench/fairness.py --seconds 20  # steadier figures
    python bench/fairness.py --no-qwen     # skip the first-use load of the Qwen-shaped table

One server (``reward-server serve`` in its own process, default settings), loaded by aiohttp:

* **flood**: ``--flood-in-flight`` requests of ``--flood-items`` open-ended GRPO items each, always
  in flight (a trainer that pushes a whole rollout batch at once);
* **small**: one request of ``--small-items`` items at a time, back to back (a second experiment
  scoring its smaller batches as they come).

Three windows, interleaved ``--reps`` times, medians printed:

* *fair*: the two are different jobs (``job`` field): the batcher's deficit round robin;
* *FIFO*: the same load, both sent as one job: arrival order, what the service did before jobs;
* *alone*: the flood only, for items/s.

Figures: the small job's p90 latency as a fraction of the flood's median request latency (FIFO
gives about 1: the small request waits behind the queue; goal <= 0.3), measured by the client and
by the server (each answer's ``timing.total_seconds``: on 2 cores the load generator's own CPU is
part of what the client measures), and items/s of the two jobs together against the flood alone
(goal >= 0.95: fairness may not cost throughput), and against the same load sent as one job
(FIFO), which separates what the schedule costs from what the small requests themselves cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench"), str(ROOT / "tests")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import aiohttp
import workloads
from run import served

POOL = workloads.grpo_open_ended(min_tokens=30, max_tokens=120)  # built once: the client must stay cheap


def open_items(count: int, salt: int) -> list[dict[str, Any]]:
    """``count`` GRPO open-ended items; ``salt`` makes the responses new (no cache helps)."""
    out = []
    for index in range(count):
        item = POOL[(index + salt) % len(POOL)]
        out.append({"response": f"{item.response} {salt}", "ground_truth": item.ground_truth,
                    "task_type": "open_ended", "group_id": item.group_id})
    return out


async def window(url: str, seconds: float, args: argparse.Namespace, small_job: str | None,
                 flood: bool = True) -> dict[str, Any]:
    """One timed window; ``small_job`` None runs the flood alone."""
    flood_latencies: list[float] = []
    small_latencies: list[float] = []
    items_done = {"flood": 0, "small": 0}
    server_small: list[float] = []
    server_flood: list[float] = []
    stop = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=args.flood_in_flight + 4)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def send(body: dict[str, Any], into: list[float], who: str) -> None:
            started = time.perf_counter()
            async with session.post(url + "/score", data=json.dumps(body),
                                    headers={"content-type": "application/json"}) as response:
                assert response.status == 200, await response.text()
                answer = json.loads(await response.read())
            into.append(time.perf_counter() - started)
            items_done[who] += len(body["items"])
            (server_small if who == "small" else server_flood).append(answer["timing"]["total_seconds"])

        async def flood_loop(lane: int) -> None:
            salt = lane * 1000
            while time.perf_counter() < stop:
                salt += 1
                await send({"items": open_items(args.flood_items, salt), "job": "flood"}, flood_latencies, "flood")

        async def small_loop() -> None:
            salt = 10**6
            while time.perf_counter() < stop:
                salt += 1
                await send({"items": open_items(args.small_items, salt), "job": small_job}, small_latencies, "small")

        lanes = [flood_loop(lane) for lane in range(args.flood_in_flight)] if flood else []
        if small_job is not None:
            lanes.append(small_loop())
        started = time.perf_counter()
        await asyncio.gather(*lanes)
        elapsed = time.perf_counter() - started
    return {
        "flood_median": statistics.median(flood_latencies) if flood_latencies else float("nan"),
        "small_p90": statistics.quantiles(small_latencies, n=10)[-1] if len(small_latencies) >= 10 else float("nan"),
        "items_per_s": (items_done["flood"] + items_done["small"]) / elapsed,
        "small_requests": len(small_latencies),
        "server_small_p90": statistics.quantiles(server_small, n=10)[-1] if len(server_small) >= 10 else float("nan"),
        "server_flood_median": statistics.median(server_flood) if server_flood else float("nan"),
    }


def first_use_load(args: argparse.Namespace) -> dict[str, float]:
    """Seconds from the first request naming a Qwen2.5-VL-shaped table to its answer (the load
    included), against the same request once the table is resident."""
    import httpx
    import qwen_checkpoint

    dim = 512 if args.quick else qwen_checkpoint.QWEN_DIM
    directory = Path(args.qwen_checkpoint or f"/tmp/mixed-reward-qwen25vl-{dim}")  # shared with bench/run.py
    if not (directory / "model.safetensors.index.json").exists():
        qwen_checkpoint.build_qwen_checkpoint(directory, dim=dim)
    body = {"items": open_items(8, 1), "model": "qwen"}
    with served(["--table", f"qwen={directory}"]) as url:
        started = time.perf_counter()
        first = httpx.post(url + "/score", json=body, timeout=600).json()
        cold = time.perf_counter() - started
        started = time.perf_counter()
        httpx.post(url + "/score", json=body, timeout=600).raise_for_status()
        warm = time.perf_counter() - started
    return {"cold_s": cold, "warm_s": warm, "table_load_s": first["timing"]["table_load_seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--flood-items", type=int, default=256)
    parser.add_argument("--flood-in-flight", type=int, default=8)
    parser.add_argument("--small-items", type=int, default=8)
    parser.add_argument("--no-qwen", action="store_true")
    parser.add_argument("--quick", action="store_true", help="a smaller Qwen-shaped table (512 wide)")
    parser.add_argument("--qwen-checkpoint", default=None, help="default: the one bench/run.py builds in /tmp")
    args = parser.parse_args()

    runs: dict[str, list[dict[str, Any]]] = {"fair": [], "fifo": [], "alone": []}
    with served() as url:
        asyncio.run(window(url, 2.0, args, "small"))  # warm-up: truths cached, allocator settled
        for _ in range(args.reps):
            runs["fair"].append(asyncio.run(window(url, args.seconds, args, "small")))
            runs["fifo"].append(asyncio.run(window(url, args.seconds, args, "flood")))
            runs["alone"].append(asyncio.run(window(url, args.seconds, args, None)))

    def med(kind: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[kind])

    print(f"flood: {args.flood_in_flight} x {args.flood_items}-item requests in flight; small: "
          f"{args.small_items}-item requests back to back; {args.reps} x {args.seconds:g} s windows, medians")
    print(f"{'':36} {'fair (two jobs)':>16} {'FIFO (one job)':>16}")
    print(f"{'flood median request latency (s)':36} {med('fair', 'flood_median'):16.3f} {med('fifo', 'flood_median'):16.3f}")
    print(f"{'small p90 latency (s)':36} {med('fair', 'small_p90'):16.3f} {med('fifo', 'small_p90'):16.3f}")
    ratio_fair = med("fair", "small_p90") / med("fair", "flood_median")
    ratio_fifo = med("fifo", "small_p90") / med("fifo", "flood_median")
    print(f"{'small p90 / flood median':36} {ratio_fair:16.2f} {ratio_fifo:16.2f}   (goal <= 0.3 fair)")
    server_fair = med("fair", "server_small_p90") / med("fair", "server_flood_median")
    server_fifo = med("fifo", "server_small_p90") / med("fifo", "server_flood_median")
    print(f"{'the same, server-side (timing.total)':36} {server_fair:16.2f} {server_fifo:16.2f}   (handler start to answer:"
          " without the load generator's own CPU on these 2 cores)")
    together = med("fair", "items_per_s")
    fifo = med("fifo", "items_per_s")
    alone = med("alone", "items_per_s")
    print(f"items/s: two jobs {together:,.0f}, the flood alone {alone:,.0f}: ratio {together / alone:.2f} "
          "(goal >= 0.95)")
    print(f"items/s: two jobs {together:,.0f}, the same load as one job (FIFO) {fifo:,.0f}: ratio {together / fifo:.2f} "
          "(what the fair schedule itself costs; the rest is the small job's many small requests)")
    if not args.no_qwen:
        load = first_use_load(args)
        print(f"first use of a Qwen2.5-VL-shaped table ({'512 wide, --quick' if args.quick else '152,064 x 3,584'}):"
              f" {load['cold_s']:.1f} s for the first request (table load {load['table_load_s']:.1f} s), "
              f"{load['warm_s']:.2f} s once resident")


if __name__ == "__main__":
    main()
