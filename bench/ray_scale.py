"""Ray Serve scale-out: items/s with 1 vs 2 replicas, over HTTP (the Serve proxy) and over a
DeploymentHandle (mixed_reward_client.ray, no HTTP hop), as ratios measured in one run.

    python bench/ray_scale.py                  # ~3 min on 2 CPU cores (Ray start-up included)
    python bench/ray_scale.py --reps 5 --seconds 10   # steadier figures

A local Ray cluster on 127.0.0.1 with two applications side by side, one of 1 replica and one of 2
(the same table and settings); Ray gives each replica one CPU, so its torch runs one thread. The
timed windows of the four configurations (1 or 2 replicas, HTTP or handle) are interleaved,
``--reps`` each, and the median is printed. Each window sends the same workload (512 GRPO
open-ended items of 50-300 tokens plus 512 mixed rule items, in 64-item requests, 8 in flight) for
``--seconds`` and counts the items answered; a short window of each configuration first warms up. Every answer is checked against
one reference pass (rewards equal within 1e-6 whichever replica and path scored them) before any
figure is printed. On 2 cores the replicas, the proxy and this load generator share the CPUs, so 2
replicas cannot approach 2x here: the figure says what a second replica costs and gains on the
same hardware, not what a second GPU gives.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "clients"), str(ROOT / "bench")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx
import ray
import workloads
from mixed_reward_client import AsyncRewardClient
from mixed_reward_client.ray import AsyncRayRewardClient
from ray import serve

from reward_server.items.settings import Settings
from reward_server.ray_serve.launch import deploy

CHUNK = 64
IN_FLIGHT = 8


def workload() -> list[dict[str, Any]]:
    items = [{"response": it.response, "ground_truth": it.ground_truth, "task_type": it.task_type,
              "group_id": it.group_id} for it in workloads.grpo_open_ended(min_tokens=50, max_tokens=300)]
    items += [{"response": it.response, "ground_truth": it.ground_truth, "task_type": it.task_type,
               "group_id": f"m{it.group_id}"} for it in workloads.mixed(items=512)]
    return [{**item, "id": index} for index, item in enumerate(items)]


async def window(client: Any, items: list[dict[str, Any]], seconds: float) -> tuple[float, list[dict[str, Any]]]:
    """Items/s answered in ``seconds`` of CHUNK-item requests, IN_FLIGHT at a time; one pass's rows."""
    chunks = [items[i : i + CHUNK] for i in range(0, len(items), CHUNK)]
    done = 0
    first: list[dict[str, Any]] = [None] * len(items)  # type: ignore[list-item]
    stop_at = time.perf_counter() + seconds
    started = time.perf_counter()

    async def worker(offset: int) -> None:
        nonlocal done
        index = offset
        while time.perf_counter() < stop_at:
            chunk = chunks[index % len(chunks)]
            rows = (await client.score(chunk)).results
            if index < len(chunks):
                for item, row in zip(chunk, rows):
                    first[item["id"]] = row
            done += len(chunk)
            index += IN_FLIGHT

    await asyncio.gather(*(worker(k) for k in range(IN_FLIGHT)))
    return done / (time.perf_counter() - started), first


def check(rows: list[dict[str, Any]], reference: list[dict[str, Any]], label: str) -> None:
    for got, want in zip(rows, reference):
        if got is None:
            continue
        if got["id"] != want["id"] or abs(got["reward"] - want["reward"]) > 1e-6:
            raise SystemExit(f"{label}: item {want['id']} scored {got['reward']}, reference {want['reward']}")


async def measure(url: str, items: list[dict[str, Any]], seconds: float, reps: int) -> dict[tuple[int, str], float]:
    """Median items/s per (replicas, path), the windows interleaved so that load from elsewhere on
    the machine falls on every configuration alike."""
    clients = {}
    for replicas in (1, 2):
        app = f"scale-{replicas}"
        clients[(replicas, "http")] = AsyncRewardClient(f"{url}/{app}", timeout=300, max_batch_items=CHUNK)
        clients[(replicas, "handle")] = AsyncRayRewardClient(app, timeout=300, max_batch_items=CHUNK)
    reference = None
    for key, client in clients.items():  # warm-up: caches, connections, the handle's router
        _, rows = await window(client, items, min(seconds, 3.0))
        reference = reference or rows
        check(rows, reference, f"{key[0]} replica(s) over {key[1]}")
    rates: dict[tuple[int, str], list[float]] = {key: [] for key in clients}
    for _ in range(reps):
        for key, client in clients.items():
            rate, rows = await window(client, items, seconds)
            check(rows, reference, f"{key[0]} replica(s) over {key[1]}")
            rates[key].append(rate)
    for key, client in clients.items():
        if key[1] == "http":
            await client.aclose()
    return {key: statistics.median(values) for key, values in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each timed window")
    parser.add_argument("--reps", type=int, default=3, help="timed windows per configuration (median)")
    args = parser.parse_args()
    ray.init(address="local", num_cpus=4, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False, configure_logging=False, namespace="mixed-reward")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}"
    items = workload()
    deploy(*(Settings(replicas=n, ray_app_name=f"scale-{n}", ray_route_prefix=f"/scale-{n}") for n in (1, 2)),
           timeout_s=600)
    for n in (1, 2):
        while len(httpx.get(f"{url}/scale-{n}/v1/info", timeout=30).json()["replicas"]["replicas"]) != n:
            time.sleep(0.5)
    rates = asyncio.run(measure(url, items, args.seconds, args.reps))
    serve.shutdown()
    ray.shutdown()
    results = {n: {path: rates[(n, path)] for path in ("http", "handle")} for n in (1, 2)}

    print(f"Ray Serve scale-out, {os.cpu_count()} CPUs, {len(items)} items ({CHUNK}-item requests, "
          f"{IN_FLIGHT} in flight), median of {args.reps} interleaved {args.seconds:g} s windows; "
          "every answer checked against one reference pass")
    print(f"{'replicas':>8} {'HTTP items/s':>13} {'handle items/s':>15} {'handle/HTTP':>12}")
    for replicas, rates in results.items():
        print(f"{replicas:>8} {rates['http']:>13,.0f} {rates['handle']:>15,.0f} {rates['handle'] / rates['http']:>11.2f}x")
    print(f"2 vs 1 replicas: HTTP {results[2]['http'] / results[1]['http']:.2f}x, "
          f"handle {results[2]['handle'] / results[1]['handle']:.2f}x")


if __name__ == "__main__":
    main()
