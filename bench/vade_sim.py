"""VADE against uniform prompt sampling, through the real server, with a simulated policy.

    python bench/vade_sim.py                 # 2,000 prompts, 200 steps of 64 prompts x 8 rollouts
    python bench/vade_sim.py --steps 50      # shorter

No trainer: a pool of synthetic prompts has hidden success probabilities
``p_i(t) = sigmoid(a_i + r_i * t / steps)`` (``a_i ~ N(-1.5, 3)``: from hopeless to solved;
``r_i ~ U(0.5, 4)``: every prompt gets easier as the simulated policy improves). Each step picks 64
prompts, draws 8 Bernoulli outcomes per prompt and sends them to ``POST /score`` as real yes/no
items (a correct rollout answers ``yes`` to a ``yes`` truth, an incorrect one ``no``), one group
per prompt. The server's own group statistics say which groups have reward variance.

* uniform: 64 prompts drawn uniformly without replacement each step (items carry no prompt_id);
* VADE: ``POST /v1/sample {"pool": ..., "k": 64}`` on a pool registered once; its items carry
  ``prompt_id``, so the server's posteriors follow what it scored.

Both arms see the same hidden probabilities and run interleaved, step by step, against one server
process. Printed: effective groups (reward variance > 0) per arm, their ratio, and rollouts
wasted on dead groups (all 8 rewards equal).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx
import numpy as np
from run import served

THINK = "<think>checking the image</think>"


def items_for(prompts: np.ndarray, outcomes: np.ndarray, with_prompt_id: bool) -> list[dict]:
    items = []
    for group, (prompt, row) in enumerate(zip(prompts, outcomes)):
        for k, ok in enumerate(row):
            item = {
                "id": f"{group}-{k}",
                "response": f"{THINK}<answer>{'yes' if ok else 'no'}</answer>",
                "ground_truth": "yes",
                "task_type": "yes_no",
                "group_id": group,
            }
            if with_prompt_id:
                item["prompt_id"] = f"sim-{int(prompt)}"
            items.append(item)
    return items


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=64, help="prompts per step")
    parser.add_argument("--rollouts", type=int, default=8, help="rollouts per prompt (GRPO group size)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra 'reward-server serve' flag, e.g. --server-arg=--difficulty-local-decay=0.9")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    a = rng.normal(-1.5, 3.0, args.prompts)
    r = rng.uniform(0.5, 4.0, args.prompts)
    state_dir = tempfile.mkdtemp(prefix="vade-sim-")
    server_args = ["--state-path", str(Path(state_dir) / "state.db"), *args.server_arg]
    stats = {arm: {"effective": 0, "dead": 0, "windows": []} for arm in ("uniform", "vade")}
    window = max(1, args.steps // 4)
    started = time.perf_counter()
    with served(server_args) as url, httpx.Client(base_url=url, timeout=600) as client:
        pool = [f"sim-{i}" for i in range(args.prompts)]
        client.put("/v1/pools/sim", json={"prompt_ids": pool}).raise_for_status()
        for step in range(args.steps):
            p = 1.0 / (1.0 + np.exp(-(a + r * step / args.steps)))
            for arm in ("uniform", "vade"):
                if arm == "uniform":
                    chosen = rng.choice(args.prompts, size=args.batch, replace=False)
                else:
                    answer = client.post("/v1/sample", json={"pool": "sim", "k": args.batch, "seed": step})
                    answer.raise_for_status()
                    chosen = np.array([int(pid.removeprefix("sim-")) for pid in answer.json()["prompt_ids"]])
                outcomes = rng.random((args.batch, args.rollouts)) < p[chosen][:, None]
                scored = client.post("/score", json={"items": items_for(chosen, outcomes, arm == "vade")})
                scored.raise_for_status()
                groups = scored.json()["groups"]
                assert len(groups) == args.batch
                live = sum(not g["zero_variance"] for g in groups)
                s = stats[arm]
                s["effective"] += live
                s["dead"] += args.batch - live
                if step % window == 0:
                    s["windows"].append(0)
                s["windows"][-1] += live
        tracked = client.get("/v1/prompts").text.count("\n")
    elapsed = time.perf_counter() - started

    total = args.steps * args.batch
    print(f"VADE simulation: {args.prompts} prompts, {args.steps} steps x {args.batch} prompts x "
          f"{args.rollouts} rollouts, seed {args.seed}, {elapsed:.0f} s (real server, {tracked} prompts tracked)")
    print(f"{'arm':<8} {'effective groups':>18} {'share':>7} {'rollouts wasted on dead groups':>32}   "
          f"effective per {window}-step window")
    for arm, s in stats.items():
        print(f"{arm:<8} {s['effective']:>18,} {s['effective'] / total:>7.1%} "
              f"{s['dead'] * args.rollouts:>32,}   {s['windows']}")
    u, v = stats["uniform"], stats["vade"]
    print(f"effective-group ratio VADE / uniform: {v['effective'] / max(u['effective'], 1):.2f}x; "
          f"wasted rollouts VADE / uniform: {v['dead'] / max(u['dead'], 1):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
