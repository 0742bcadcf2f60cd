"""Fair scheduling between training jobs (SPEC §15), on the real batcher: which requests share a
device batch, in which order the batches run, and how much of another job a request waits behind.

Everything is queued before the first batch is taken (the batcher waits ``max_wait_s`` after the
first request), so the batches are the scheduler's decisions and nothing else. A batch is told
apart by its report object: every request of one batch gets the same one."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from reward_server.engine.batcher import Batcher
from reward_server.engine.scorer import RewardEngine
from reward_server.rewards.rules import prepare_ground_truth
from reward_server.rewards.scoring import PreparedItem

SHARED = 256  # items of a batch while several jobs have work


def run_schedule(default_table, requests: list[dict[str, Any]], **batcher: Any) -> list[list[tuple[str, int]]]:
    """Submit ``requests`` ({"job", "items", "priority"?, "deadline_s"?}) in order, all before the
    first batch, and return the batches in the order they ran: each a list of (job, request index)."""
    truth = prepare_ground_truth("yes_no", "yes")

    async def main() -> list[list[tuple[str, int]]]:
        scheduler = Batcher(RewardEngine(default_table), max_wait_s=0.5, max_batch_items=2048,
                            shared_batch_items=SHARED, **batcher)
        await scheduler.start()
        finished: list[tuple[Any, str, int]] = []  # (batch report, job, request index) in answer order

        async def one(index: int, request: dict[str, Any]) -> None:
            items = [PreparedItem("<answer>yes</answer>", truth)] * request["items"]
            outcome = await scheduler.submit(items, table=None, job=request["job"],
                                             priority=request.get("priority", 0),
                                             deadline_s=request.get("deadline_s"))
            finished.append((outcome.report, request["job"], index))  # kept alive: ids stay unique

        try:
            await asyncio.gather(*(one(index, request) for index, request in enumerate(requests)))
        finally:
            await scheduler.stop()
        batches: dict[int, list[tuple[str, int]]] = {}
        for report, job, index in finished:
            batches.setdefault(id(report), []).append((job, index))
        return list(batches.values())

    return asyncio.run(main())


def test_a_small_job_waits_behind_at_most_one_batch_of_a_flood(default_table) -> None:
    flood = [{"job": "flood", "items": 64} for _ in range(40)]  # 2,560 items queued first
    batches = run_schedule(default_table, [*flood, {"job": "small", "items": 8}])
    first_with_small = next(n for n, batch in enumerate(batches) if ("small", 40) in batch)
    assert first_with_small == 0  # it shares the very first batch: FIFO would put it last
    assert sum(1 for job, _ in batches[0] if job == "flood") * 64 <= SHARED
    assert all(job == "flood" for batch in batches[1:] for job, _ in batch)
    assert sorted(index for batch in batches for _, index in batch) == list(range(41))  # nothing lost


def test_each_job_gets_its_share_of_every_shared_batch(default_table) -> None:
    """Two jobs with plenty queued: every batch holds both, in equal shares (deficit round robin
    by items), whatever the order or the sizes they were queued in."""
    requests = [{"job": "a", "items": 16} for _ in range(64)] + [{"job": "b", "items": 32} for _ in range(32)]
    batches = run_schedule(default_table, requests)
    items = {"a": 16, "b": 32}
    for batch in batches[:3]:  # while both have work
        share = {job: sum(items[j] for j, _ in batch if j == job) for job in ("a", "b")}
        assert share["a"] == share["b"] == SHARED // 2, share


@pytest.mark.parametrize("urgent", [{"priority": 5}, {"deadline_s": 30.0}], ids=["priority", "deadline"])
def test_a_higher_priority_or_nearer_deadline_goes_first_but_does_not_starve_the_other(
    default_table, urgent: dict[str, Any],
) -> None:
    """Requests of a whole shared batch each: one job's per batch. The urgent job, queued last,
    runs first; then the two alternate (the other job's deficit grew while it waited)."""
    calm = [{"job": "calm", "items": SHARED, "deadline_s": 3600.0} for _ in range(3)]
    hurried = [{"job": "urgent", "items": SHARED, **urgent} for _ in range(3)]
    batches = run_schedule(default_table, [*calm, *hurried])
    assert [[job for job, _ in batch] for batch in batches] == [
        ["urgent"], ["calm"], ["urgent"], ["calm"], ["urgent"], ["calm"],
    ]
