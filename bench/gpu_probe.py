"""What one 512-item batch costs the device: syncs, kernels, device time and wall time, cold and warm.

    python bench/gpu_probe.py                 # default table (bf16 on CUDA), then the Qwen-shaped one
    python bench/gpu_probe.py --table default --reps 20

For 64 groups of 8 and 512 groups of 1 (the GRPO workload of bench/workloads.py, token ids in):

* host ms:   the host stage (``prepare_ids``: flat arrays, one pinned buffer);
* wall ms:   the device stage (``run_batch``) as the caller sees it, results on the host;
* device ms: CUDA events around the device stage (the GPU's own clock);
* kernels:   CUDA kernels and copies the profiler records for one warm batch;
* syncs:     warnings of ``torch.cuda.set_sync_debug_mode("warn")`` for one warm batch, and the
             synchronising ops bench/opcount.py counts (they should agree: 2);
* ops:       aten ops at the dispatcher;
* same bytes: the batch scored twice gives identical float32 bytes.

"cold" is the first batch of a fresh engine (cuBLAS handles, the caching allocator's first
blocks); "warm" the median of ``--reps`` batches after it. Without CUDA it runs on CPU and prints
what a CPU can measure (no kernels, no device clock), so the script itself is tested anywhere.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import opcount
import torch
import workloads

from reward_server.embeddings.loader import load_table
from reward_server.engine.bmas import prepare_truth
from reward_server.engine.scorer import RewardEngine
from reward_server.engine.tokenization import encode_flat
from reward_server.rewards.spans import answer_span

QWEN_VOCAB, QWEN_DIM = 152_064, 3_584


class _IdTable:
    """The slice of EmbeddingTable the engine reads, for a random table without a tokenizer."""

    def __init__(self, weight: torch.Tensor) -> None:
        self.weight = weight
        self.zero_rows = weight.float().norm(dim=1) == 0
        self.device = weight.device
        self.tokenizer = None
        self.vocab_size = int(weight.shape[0])


def _inputs(bert, prompts: int, per_prompt: int, mapping: np.ndarray | None) -> tuple:
    """Token ids of the GRPO workload (BERT ids, or mapped into the Qwen vocab by a fixed injection)."""
    items = workloads.grpo_open_ended(prompts=prompts, per_prompt=per_prompt)
    flat, lengths = encode_flat(bert, [answer_span(i.response) for i in items])
    truths = [np.asarray(ids, dtype=np.int64) for ids in bert.encode([i.ground_truth for i in items[::per_prompt]])]
    if mapping is not None:
        flat, truths = mapping[flat], [mapping[t] for t in truths]
    return flat, lengths, [per_prompt] * prompts, truths


def _device_ms(engine: RewardEngine, prepared: Any) -> float | None:
    if engine.device.type != "cuda":
        return None
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    engine.run_batch(prepared)
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def _kernels(engine: RewardEngine, prepared: Any) -> int | None:
    if engine.device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        engine.run_batch(prepared)
        torch.cuda.synchronize()
    return sum(1 for event in prof.events() if event.device_type == torch.autograd.DeviceType.CUDA)


def _sync_warnings(engine: RewardEngine, prepared: Any) -> int | None:
    if engine.device.type != "cuda":
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            engine.run_batch(prepared)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum(1 for w in caught if "synchroniz" in str(w.message))


def probe(table: Any, name: str, inputs: tuple, reps: int) -> None:
    flat, lengths, sizes, truths = inputs
    engine = RewardEngine(table, kernel_threads=1)  # one slice: what CUDA runs, counted on this thread
    started = time.perf_counter()
    prepared = engine.prepare_ids(flat, lengths, sizes, [prepare_truth(t) for t in truths])
    host_cold = time.perf_counter() - started
    started = time.perf_counter()
    first = engine.run_batch(prepared)
    wall_cold = time.perf_counter() - started
    states = [prepare_truth(t) for t in truths]
    host, wall, device = [], [], []
    for _ in range(reps):
        started = time.perf_counter()
        prepared = engine.prepare_ids(flat, lengths, sizes, states)
        host.append(time.perf_counter() - started)
        started = time.perf_counter()
        second = engine.run_batch(prepared)
        wall.append(time.perf_counter() - started)
        ms = _device_ms(engine, prepared)
        if ms is not None:
            device.append(ms)
    same = np.asarray(first, dtype=np.float32).tobytes() == np.asarray(second, dtype=np.float32).tobytes()
    with opcount.count_ops(host_reads=engine.device.type == "cpu") as counts:
        engine.run_batch(prepared)
    kernels, syncs = _kernels(engine, prepared), _sync_warnings(engine, prepared)

    def show(value: float | None, width: int, decimals: int = 0) -> str:
        return f"{'-':>{width}}" if value is None else f"{value:>{width}.{decimals}f}"

    print(f"{name:<34}{'cold':<6}{host_cold * 1e3:>9.2f}{wall_cold * 1e3:>9.2f}{'-':>10}{'-':>9}{'-':>7}{'-':>6}")
    print(f"{name:<34}{'warm':<6}{statistics.median(host) * 1e3:>9.2f}{statistics.median(wall) * 1e3:>9.2f}"
          f"{show(statistics.median(device) if device else None, 10, 3)}{show(kernels, 9)}"
          f"{show(syncs, 7)}{counts.total_syncs:>6}{counts.total:>6}  {'yes' if same else 'NO'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", choices=["all", "default", "qwen"], default="all")
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    print(f"torch {torch.__version__}, device {torch.cuda.get_device_name() if cuda else 'cpu'}, "
          f"reps={args.reps} (warm: medians)")
    print(f"{'table / workload':<34}{'':<6}{'host ms':>9}{'wall ms':>9}{'device ms':>10}{'kernels':>9}"
          f"{'syncs':>7}{'(ops)':>6}{'ops':>6}  same bytes")
    bert = load_table(None, device="cpu")
    tables: list[tuple[str, Any, np.ndarray | None]] = []
    if args.table in ("all", "default"):
        tables.append(("default", load_table(None, device=device), None))
    if args.table in ("all", "qwen"):
        gen = torch.Generator().manual_seed(0)
        weight = torch.randn(QWEN_VOCAB, QWEN_DIM, generator=gen)
        weight /= weight.norm(dim=1, keepdim=True)
        weight = weight.to(device, torch.bfloat16 if cuda else torch.float32)
        mapping = torch.randperm(QWEN_VOCAB, generator=gen)[: bert.vocab_size].numpy()
        tables.append(("qwen-shaped", _IdTable(weight), mapping))
    for label, table, mapping in tables:
        dtype = str(table.weight.dtype).removeprefix("torch.")
        for prompts, per_prompt in ((64, 8), (512, 1)):
            probe(table, f"{label} {dtype}, {prompts}x{per_prompt}", _inputs(bert, prompts, per_prompt, mapping),
                  args.reps)
        del table
    print("goal (GPU): device stage of 512 items < 2 ms wall warm, 2 syncs, identical bytes run to run")


if __name__ == "__main__":
    main()
