"""Coalesce concurrent scoring requests into device batches, owned by a single worker.

Trainers send either one big batch or hundreds of one-item requests at once. Scoring each of the
latter alone would pay the kernel's fixed costs hundreds of times, so every request is queued and a
single worker takes whatever is queued — waiting at most ``max_wait_s`` after the oldest request
arrived, and cutting at ``max_batch_items`` — and scores it as one batch on a dedicated thread while
the event loop keeps accepting requests. The queue is bounded: past ``max_queue_items`` a request
is refused at once (the HTTP layer answers 429) instead of piling up latency.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from reward_server.engine.scorer import BatchReport, RewardEngine
from reward_server.errors import NotReady, Overloaded
from reward_server.rewards.scoring import ItemReward, PreparedItem

log = logging.getLogger("reward_server")


class QueueFull(Overloaded):
    """The scoring queue holds too many items; the caller should retry later (429)."""


class BatcherStopped(NotReady):
    """The batcher was shut down before this request was scored (503)."""


@dataclass
class RequestOutcome:
    """One request's results plus what it cost, stage by stage."""

    results: list[ItemReward]
    table: dict[str, object]
    queue_seconds: float
    batch_items: int
    report: BatchReport


@dataclass
class _Job:
    items: Sequence[PreparedItem]
    future: asyncio.Future[RequestOutcome]
    enqueued: float = field(default_factory=time.perf_counter)


BatchListener = Callable[[BatchReport, int, float], None]


class Batcher:
    def __init__(
        self,
        engine: RewardEngine,
        *,
        max_wait_s: float = 0.004,
        max_batch_items: int = 2048,
        max_queue_items: int = 65536,
        on_batch: BatchListener | None = None,
    ) -> None:
        self.engine = engine  # swapped atomically by a table reload; read once per batch
        self.max_wait_s = max_wait_s
        self.max_batch_items = max_batch_items
        self.max_queue_items = max_queue_items
        self._on_batch = on_batch
        self._pending: deque[_Job] = deque()
        self._pending_items = 0
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reward-engine")

    @property
    def queued_items(self) -> int:
        return self._pending_items

    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._worker = asyncio.create_task(self._run(), name="reward-batcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        while self._pending:
            job = self._pending.popleft()
            if not job.future.done():
                job.future.set_exception(BatcherStopped("the reward server is shutting down"))
        self._pending_items = 0
        self._executor.shutdown(wait=True)

    async def submit(self, items: Sequence[PreparedItem]) -> RequestOutcome:
        if self._wakeup is None or self._worker is None or self._worker.done():
            raise BatcherStopped("the batcher is not running")
        if self._pending_items and self._pending_items + len(items) > self.max_queue_items:
            raise QueueFull(
                f"{self._pending_items} items are already queued (limit {self.max_queue_items}); retry shortly"
            )
        job = _Job(items, asyncio.get_running_loop().create_future())
        first = not self._pending
        self._pending.append(job)
        self._pending_items += len(items)
        # Wake the worker only when it has something new to decide: the first request of a batch
        # (start its wait) or a full batch (stop waiting). Waking it for every arrival of a burst
        # of one-item requests cost a wake-up, a timer and a task each.
        if first or self._pending_items >= self.max_batch_items:
            self._wakeup.set()
        return await job.future

    def _take_batch(self) -> list[_Job]:
        batch = [self._pending.popleft()]
        size = len(batch[0].items)
        while self._pending and size + len(self._pending[0].items) <= self.max_batch_items:
            job = self._pending.popleft()
            batch.append(job)
            size += len(job.items)
        self._pending_items -= sum(len(job.items) for job in batch)
        return batch

    async def _run(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            wait_left = self._pending[0].enqueued + self.max_wait_s - time.perf_counter()
            if wait_left > 0 and self._pending_items < self.max_batch_items:
                self._wakeup.clear()
                timer = loop.call_later(wait_left, self._wakeup.set)  # cheaper than wait_for's task
                try:
                    await self._wakeup.wait()
                finally:
                    timer.cancel()
                continue
            batch = [job for job in self._take_batch() if not job.future.done()]  # skip clients gone
            if not batch:
                continue
            await self._score(loop, batch)

    async def _score(self, loop: asyncio.AbstractEventLoop, batch: list[_Job]) -> None:
        engine = self.engine
        items = [item for job in batch for item in job.items]
        started = time.perf_counter()
        try:
            results, report = await loop.run_in_executor(self._executor, engine.score, items)
        except Exception as exc:  # noqa: BLE001 — a bug, not a client mistake
            if len(batch) > 1:  # rescore request by request: one bad request must not fail its neighbours
                for job in batch:
                    await self._score(loop, [job])
                return
            if not batch[0].future.done():
                batch[0].future.set_exception(exc)
            return
        elapsed = time.perf_counter() - started
        table = engine.table.info()
        offset = 0
        for job in batch:
            count = len(job.items)
            if not job.future.done():
                job.future.set_result(
                    RequestOutcome(
                        results=results[offset : offset + count],
                        table=table,
                        queue_seconds=started - job.enqueued,
                        batch_items=len(items),
                        report=report,
                    )
                )
            offset += count
        if self._on_batch is not None:
            try:
                self._on_batch(report, len(items), elapsed)
            except Exception:  # a metrics bug must not stop the scoring worker
                log.exception("batch listener failed")
