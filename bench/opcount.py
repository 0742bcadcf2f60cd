"""Counting torch ops, and the ops that would synchronise the host with a GPU, around any code.

A GPU runs this service's kernel in a few milliseconds of arithmetic; what costs is one launch per
op and one host round trip per synchronisation. Both can be counted on a CPU-only machine: every
aten op goes through the dispatcher, where a ``TorchDispatchMode`` sees it, and the ops that make
CUDA wait for the device are known by name. Used by ``bench/run.py`` (the figures per 512-item
batch), ``bench/gpu_probe.py`` and ``tests/test_engine_ops.py`` (the gate).

Counted as a synchronisation:

* an op whose output size or value the host must read: ``.item()``/``int(t)``/``bool(t)``
  (``_local_scalar_dense``, ``is_nonzero``), ``nonzero``, ``unique``, ``masked_select`` (a boolean
  mask index goes through ``nonzero``), ``repeat_interleave`` without ``output_size``, ``bincount``,
  ``equal``;
* a copy from a device to the host (``_to_copy``/``copy_`` into a CPU tensor from a CUDA one);
* on a CPU-only run, where such a copy is a no-op the dispatcher never sees, the Python-level reads
  that would be one on a GPU: ``Tensor.tolist()`` and ``Tensor.numpy()``.

Dispatch modes are per thread: count with the code running on the calling thread (one kernel
slice, ``kernel_threads=1``). A pageable host-to-device copy (which blocks on CUDA) is invisible on
CPU; the engine ships pinned buffers only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

SYNC_OPS = frozenset({
    "_local_scalar_dense", "is_nonzero", "nonzero", "_unique", "_unique2", "unique_dim", "unique_consecutive",
    "unique_dim_consecutive", "masked_select", "bincount", "equal",
})


@dataclass
class OpCounts:
    """What ran inside a :func:`count_ops` block."""

    ops: Counter[str] = field(default_factory=Counter)
    syncs: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.ops.values())

    @property
    def total_syncs(self) -> int:
        return sum(self.syncs.values())


class _Mode(TorchDispatchMode):
    def __init__(self, counts: OpCounts) -> None:
        super().__init__()
        self.counts = counts

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        self.counts.ops[name] += 1
        if name in SYNC_OPS or (name == "repeat_interleave" and kwargs.get("output_size") is None):
            self.counts.syncs[name] += 1
        elif name in ("_to_copy", "copy_") and _device_to_host(name, args, kwargs):
            self.counts.syncs["device-to-host copy"] += 1
        return func(*args, **kwargs)


def _device_to_host(name: str, args: tuple, kwargs: dict) -> bool:
    if name == "_to_copy":
        target = kwargs.get("device")
        return target is not None and torch.device(target).type == "cpu" and args[0].device.type != "cpu"
    destination, source = args[0], args[1]
    return isinstance(source, torch.Tensor) and destination.device.type == "cpu" and source.device.type != "cpu"


@contextmanager
def count_ops(host_reads: bool = True) -> Iterator[OpCounts]:
    """Count the aten ops and synchronising ops run on this thread inside the block.

    ``host_reads``: also count ``Tensor.tolist()``/``Tensor.numpy()`` calls (the device-to-host
    reads of a CPU-only run; turn it off on CUDA, where the copy itself is counted).
    """
    counts = OpCounts()
    originals: dict[str, Callable[..., Any]] = {}
    if host_reads:
        for method in ("tolist", "numpy"):
            original = getattr(torch.Tensor, method)
            originals[method] = original

            def reading(self: torch.Tensor, *args: Any, _original: Callable[..., Any] = original,
                        _name: str = method, **kwargs: Any) -> Any:
                counts.syncs[f"Tensor.{_name}"] += 1
                return _original(self, *args, **kwargs)

            setattr(torch.Tensor, method, reading)
    try:
        with _Mode(counts):
            yield counts
    finally:
        for method, original in originals.items():
            setattr(torch.Tensor, method, original)


def ops_per_batch(table: Any, prompts: int = 64, per_prompt: int = 8, **engine_kwargs: Any) -> dict[str, OpCounts]:
    """Ops and synchronisations of one warm ``engine.score`` of ``prompts x per_prompt`` open-ended
    items, as ``prompts`` groups of ``per_prompt`` and as ``prompts*per_prompt`` groups of one (the
    same GRPO text generator, so the same token counts). The engine runs its kernel on this thread
    (``kernel_threads=1``); ``engine_kwargs`` go to ``RewardEngine`` (any version of it)."""
    import workloads

    from reward_server.engine.scorer import RewardEngine
    from reward_server.rewards.registry import resolve_family
    from reward_server.rewards.rules import prepare_ground_truth
    from reward_server.rewards.scoring import PreparedItem

    engine = RewardEngine(table, kernel_threads=1, **engine_kwargs)
    results = {}
    for name, shape in ((f"{prompts} groups of {per_prompt}", (prompts, per_prompt)),
                        (f"{prompts * per_prompt} groups of 1", (prompts * per_prompt, 1))):
        items = [PreparedItem(i.response, prepare_ground_truth(resolve_family(i.task_type), i.ground_truth))
                 for i in workloads.grpo_open_ended(prompts=shape[0], per_prompt=shape[1])]
        engine.score(items)  # warm: truths cached, as every epoch after the first
        with count_ops(host_reads=table.device.type == "cpu") as counts:
            engine.score(items)
        results[name] = counts
    return results


def print_ops(results: dict[str, OpCounts], label: str) -> None:
    """One line per workload, then the growth from grouped to ungrouped."""
    for name, counts in results.items():
        kinds = ", ".join(f"{k} {v}" for k, v in counts.syncs.most_common()) or "none"
        print(f"{label:<44}{name:<18}{counts.total:>7} ops {counts.total_syncs:>5} syncs ({kinds}), "
              f"{counts.ops['bmm']} matmuls")
    first, second = list(results.values())
    print(f"{label:<44}{'growth':<18}{second.total / first.total:>7.2f}x")


def main() -> None:
    """``python bench/opcount.py [--budget-mib N]``: the figures for whatever ``reward_server`` is on
    ``sys.path`` (PYTHONPATH=<an old checkout> measures the code before a change)."""
    import argparse
    import os
    import sys
    from pathlib import Path

    sys.path.append(str(Path(__file__).resolve().parent))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--budget-mib", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    from reward_server.embeddings.loader import load_table

    table = load_table(None, device=args.device)
    print_ops(ops_per_batch(table, memory_budget_bytes=args.budget_mib << 20), f"engine, {args.budget_mib} MiB budget")


if __name__ == "__main__":
    main()
