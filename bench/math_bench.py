"""Math rewards that never block (SPEC §13a): throughput against the loop a trainer would write, and
what a verification that hangs does to everyone else.

    python bench/math_bench.py               # ~3 min on 2 CPU cores
    python bench/math_bench.py --items 256   # quicker

Two figures, each a ratio measured in one run:

1. **items/s**: ``POST /score`` of ``--items`` math items (GRPO-shaped: 8 answers per problem, golds
   in several notations, right and wrong answers, no pathological ones) through a real server,
   against a per-item loop in this process that does what a TRL or verl reward function does:
   ``parse(gold)``, ``parse(answer)``, ``verify`` for each item (math-verify's own timeouts off,
   as in the service). Goal >= 1.5x on 2 cores: the pool's worker processes run side by side and
   each parses a gold once.
2. **p99 of an open-ended request while math is verified**: 8-item open-ended requests sent back to
   back; their p99 latency alone, and while 512 math items are being verified, 10 of them
   pathological (Math-Verify issue #65: sympy never finishes; each is killed at the deadline).
   Goal <= 1.5x: the BMAS path never waits on a math worker, and the workers run niced.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench"), str(ROOT / "tests")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx
import workloads
from run import served

PATHOLOGICAL = r"\boxed{\dfrac{5^{(5^{(5^{(5^5)})}-4)}-5}{16}}"  # Math-Verify issue #65


def problems(count: int, seed: int = 0) -> list[tuple[str, list[str]]]:
    """(gold, answers) per problem: the gold in one notation, answers in others, some wrong."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        a, b = rng.randint(1, 9), rng.randint(2, 12)
        kind = rng.randrange(4)
        if kind == 0:
            gold, right, wrong = f"\\frac{{{a}}}{{{b}}}", f"{a}/{b}", f"{a + 1}/{b}"
        elif kind == 1:
            gold, right, wrong = f"{a * b}", f"{a} \\times {b} = {a * b}", f"{a * b + 1}"
        elif kind == 2:
            gold, right, wrong = f"\\sqrt{{{a * a * b}}}", f"{a}\\sqrt{{{b}}}", f"{a + 1}\\sqrt{{{b}}}"
        else:
            gold, right, wrong = f"x = {a}", f"{a}", f"{-a}"
        answers = [f"<think>work</think><answer>\\boxed{{{rng.choice([right, wrong])}}}</answer>" for _ in range(8)]
        out.append((gold, answers))
    return out


def math_items(count: int, pathological: int = 0, salt: int = 0) -> list[dict[str, Any]]:
    items = [{"response": answer, "ground_truth": gold, "task_type": "math", "group_id": f"m{salt}-{n}"}
             for n, (gold, answers) in enumerate(problems(count // 8 + 1, seed=salt)) for answer in answers][:count]
    for index in range(pathological):
        items[index * (len(items) // max(1, pathological))]["response"] = f"<answer>{PATHOLOGICAL}</answer>"
    return items


def per_item_loop(items: list[dict[str, Any]]) -> tuple[float, list[float]]:
    """What a trainer's reward function does per item, in one process: parse both sides, verify."""
    from math_verify import parse, verify

    started = time.perf_counter()
    scores = []
    for item in items:
        gold = parse(item["ground_truth"], parsing_timeout=None)
        answer = parse(item["response"].split("<answer>")[1].split("</answer>")[0], parsing_timeout=None)
        scores.append(1.0 if gold and answer and verify(gold, answer, timeout_seconds=None) else 0.0)
    return time.perf_counter() - started, scores


def open_ended_latencies(url: str, stop: threading.Event, out: list[float], seconds: float | None = None) -> None:
    items = [{"response": it.response, "ground_truth": it.ground_truth, "task_type": "open_ended"}
             for it in workloads.grpo_open_ended(prompts=1, per_prompt=8, min_tokens=50, max_tokens=150)]
    deadline = time.perf_counter() + seconds if seconds is not None else None
    with httpx.Client(timeout=120) as client:
        salt = 0
        while not stop.is_set() and (deadline is None or time.perf_counter() < deadline):
            salt += 1
            body = {"items": [{**item, "response": f"{item['response']} {salt}"} for item in items]}
            started = time.perf_counter()
            client.post(url + "/score", json=body).raise_for_status()
            out.append(time.perf_counter() - started)


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=512)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--alone-seconds", type=float, default=15.0)
    args = parser.parse_args()

    with served() as url:
        with httpx.Client(timeout=600) as client:
            warm = math_items(16, salt=99)
            client.post(url + "/score", json={"items": warm}).raise_for_status()  # workers started and warm
            service_s, loop_s = [], []
            for rep in range(args.reps):
                items = math_items(args.items, salt=rep)
                started = time.perf_counter()
                answer = client.post(url + "/score", json={"items": items, "options": {"format_weight": 0}}).json()
                service_s.append(time.perf_counter() - started)
                took, scores = per_item_loop(items)
                loop_s.append(took)
                served_scores = [r["accuracy"] for r in answer["results"]]
                agree = sum(a == b for a, b in zip(scores, served_scores)) / len(scores)
        print(f"math items/s, {args.items} items (medians of {args.reps}): service "
              f"{args.items / statistics.median(service_s):,.0f}, per-item loop {args.items / statistics.median(loop_s):,.0f}: "
              f"{statistics.median(loop_s) / statistics.median(service_s):.2f}x (goal >= 1.5x); verdicts agree on "
              f"{agree:.0%} (the service reads boxed answers and hedges by SPEC §13a)")

        alone: list[float] = []
        open_ended_latencies(url, threading.Event(), alone, seconds=args.alone_seconds)
        during: list[float] = []
        stop = threading.Event()
        sender = threading.Thread(target=open_ended_latencies, args=(url, stop, during), daemon=True)
        sender.start()
        started = time.perf_counter()
        answer = httpx.post(url + "/score", json={"items": math_items(512, pathological=10, salt=7)}, timeout=900).json()
        math_s = time.perf_counter() - started
        stop.set()
        sender.join(timeout=120)
        timed_out = sum(bool(r.get("timed_out")) for r in answer["results"])
    print(f"open-ended 8-item requests: p99 alone {p99(alone) * 1000:.0f} ms ({len(alone)} requests), while 512 math "
          f"items ({timed_out} timed out, {math_s:.1f} s) were verified {p99(during) * 1000:.0f} ms ({len(during)} "
          f"requests): {p99(during) / p99(alone):.2f}x (goal <= 1.5x)")


if __name__ == "__main__":
    main()
