"""The kernel is one flat computation: its torch ops do not grow with the number of groups, and it
synchronises with the device twice per batch (the sizes that plan the matmuls, then the results).

On a GPU the cost of this kernel is launches and host round trips, not arithmetic, so these counts
are its performance contract. They are counted on any machine with a dispatch mode
(``bench/opcount.py``): every aten op, and the ops that would make CUDA wait for the device.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.append(str(Path(__file__).resolve().parents[1] / "bench"))

from opcount import count_ops, ops_per_batch

from reward_server.engine.scorer import RewardEngine
from reward_server.rewards.rules import prepare_ground_truth
from reward_server.rewards.scoring import PreparedItem

MAX_OPS = 300  # per batch, one chunk
MAX_SYNCS = 2  # the sizes, then the results


def test_the_counter_sees_synchronising_ops() -> None:
    """The gate below is only as good as the counter: it must see what the old kernel did."""
    with count_ops() as counts:
        x = torch.tensor([3, 0, 3, 1])
        torch.unique(x)
        x.nonzero()
        torch.repeat_interleave(x)
        int(x[0])
        x.tolist()
    assert counts.syncs["_unique2"] == 1 and counts.syncs["nonzero"] == 1
    assert counts.syncs["repeat_interleave"] == 1 and counts.syncs["_local_scalar_dense"] == 1
    assert counts.syncs["Tensor.tolist"] == 1
    with count_ops() as counts:
        torch.repeat_interleave(x, x, output_size=7)  # the size given: no sync
    assert counts.total_syncs == 0


def test_op_count_does_not_grow_with_groups(default_table) -> None:
    """The same GRPO text generator as 32 groups of 8 and as 256 groups of 1, each batch in one
    chunk (the CUDA plan: chunk = budget): the same ops, under the cap, two synchronisations."""
    budget = 512 << 20
    counts = ops_per_batch(default_table, prompts=32, per_prompt=8, memory_budget_bytes=budget, chunk_bytes=budget)
    grouped, ungrouped = counts.values()
    assert grouped.total < MAX_OPS and ungrouped.total < MAX_OPS
    assert ungrouped.total <= 1.2 * grouped.total
    assert grouped.total_syncs == ungrouped.total_syncs == MAX_SYNCS


def test_syncs_per_batch_with_the_cpu_plan(default_table) -> None:
    """With this machine's own plan (cache-sized chunks on CPU, so more of them for more bytes)
    a batch still synchronises twice, whatever its chunks, groups and profiles."""
    engine = RewardEngine(default_table, kernel_threads=1, memory_budget_bytes=1 << 20)
    truth = prepare_ground_truth("open_ended", "a small red dog sits on the green grass near two cats " * 20)
    items = [PreparedItem(f"a dog {i} sits on grass " * (5 + i), truth) for i in range(40)]
    items += [PreparedItem("two cats", prepare_ground_truth("open_ended", f"two cats number {i}"))
              for i in range(40)]
    engine.score(items)
    with count_ops() as counts:
        engine.score(items)
    assert counts.total_syncs == MAX_SYNCS, counts.syncs


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_batch_synchronises_twice() -> None:
    """On the GPU itself: copies to the host counted at the dispatcher, nothing else that waits."""
    from reward_server.embeddings.loader import load_table

    table = load_table(None, device="cuda")
    counts = ops_per_batch(table, prompts=32, per_prompt=8)
    for batch in counts.values():
        assert batch.total < MAX_OPS
        assert batch.total_syncs == MAX_SYNCS, batch.syncs
