"""Coalesce concurrent scoring requests into device batches, shared fairly between training jobs.

Trainers send either one big batch or hundreds of one-item requests at once. Scoring each of the
latter alone would pay the kernel's fixed costs hundreds of times, so every request is queued and a
single worker takes what is queued (waiting at most ``max_wait_s`` after the oldest request
arrived, cutting at ``max_batch_items``) and scores it as one batch on a dedicated thread while the
event loop keeps accepting requests.

Several training jobs share one service (SPEC §15), so the queue is one queue *per job* and each
batch is built by deficit round robin over the jobs with queued work (Shreedhar & Varghese): every
round gives each job a quantum of ``max_batch_items / jobs`` items, jobs with a higher ``priority``
and then a nearer ``deadline`` go first in each round, and the job served first goes last in the
next batch. So a job's request never waits behind more than one batch's worth of another job's
items, whatever that job has queued, and an idle job costs nothing (a lone job gets whole batches).

A batch may hold requests for several tables (policies): it runs as one sub-batch per table, one
after another on the same worker, each on its own engine (Ray issue #50695: Serve does not group a
batch by model id, so this must). A request whose table is not in memory stays queued while the
table loads in the background and does not hold up anything else; items that need no table
(rule-scored ones) are queued with no table and never wait for a load.

Bounds: past ``max_queue_items`` queued items in all, or ``job_queue_items`` for one job, a request
is refused at once (the HTTP layer answers 429 with Retry-After) instead of piling up latency; a
job over its own bound never slows the others.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from reward_server.engine.scorer import BatchReport, DeviceError, RewardEngine, ScoringPass
from reward_server.engine.tables import DEFAULT_TABLE, TableRegistry
from reward_server.errors import NotReady, Overloaded
from reward_server.rewards.scoring import ItemReward, PreparedItem, score_inline

log = logging.getLogger("reward_server")


class QueueFull(Overloaded):
    """The scoring queue (or one job's share of it) holds too many items; retry later (429)."""


class BatcherStopped(NotReady):
    """The batcher was shut down before this request was scored (503)."""


@dataclass
class RequestOutcome:
    """One request's results plus what it cost, stage by stage."""

    results: list[ItemReward]
    table: dict[str, object] | None  # the table that scored it; None for items that need none
    queue_seconds: float
    batch_items: int
    report: BatchReport
    table_load_seconds: float = 0.0  # how long it waited for its table to be loaded


@dataclass
class _Request:
    items: Sequence[PreparedItem]
    table: str | None  # None: rule-scored items, no table needed
    job: str
    priority: int
    deadline: float  # perf_counter time of the job's deadline; inf without one
    future: asyncio.Future[RequestOutcome]
    enqueued: float = field(default_factory=time.perf_counter)
    load_started: float | None = None  # when it first found its table not resident

    @property
    def size(self) -> int:
        return len(self.items)


@dataclass
class _JobQueue:
    name: str
    requests: deque[_Request] = field(default_factory=deque)
    items: int = 0
    deficit: float = 0.0
    turn: int = 0  # round-robin position: lower goes first among equals


BatchListener = Callable[[BatchReport, int, float], None]
MAX_SCAN = 64  # requests looked at per job for one that is ready (its table resident)
#: A job that submitted within this many seconds still shares the device: a job that sends its
#: next request as soon as the last one is answered has nothing queued in between, and a lone
#: flooding job must not take a whole long batch in that gap.
SHARE_WINDOW_S = 1.0


def single_table(engine: RewardEngine) -> TableRegistry:
    """A registry of just ``engine`` (tests, benchmarks, the offline scorer's shape)."""
    return TableRegistry(engine, {}, default_path=None, max_resident=1, build=lambda *_: engine)


class Batcher:
    def __init__(
        self,
        tables: TableRegistry | RewardEngine,
        *,
        max_wait_s: float = 0.004,
        max_batch_items: int = 2048,
        shared_batch_items: int | None = None,
        max_queue_items: int = 65536,
        job_queue_items: int | None = None,
        on_batch: BatchListener | None = None,
    ) -> None:
        self.tables = tables if isinstance(tables, TableRegistry) else single_table(tables)
        self.max_wait_s = max_wait_s
        self.max_batch_items = max_batch_items
        self.shared_batch_items = min(shared_batch_items or max_batch_items, max_batch_items)
        self.max_queue_items = max_queue_items
        self.job_queue_items = job_queue_items
        self._on_batch = on_batch
        self._jobs: dict[str, _JobQueue] = {}
        self._last_seen: dict[str, float] = {}  # job -> its last submit (perf_counter)
        self._pending_items = 0
        self._turns = 0
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        # Two threads: the host stage (rules, tokenization) of batch N+1 overlaps the device stage
        # (the kernel) of batch N. One of each keeps batches in order and one kernel at a time.
        self._host = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reward-host")
        self._device = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reward-device")
        self.device_error: BaseException | None = None  # a CUDA error: the service is not ready
        self.tables.on_loaded = self._wake
        self.tables.on_retired = lambda engine: self._device.submit(engine.close)  # after the batch using it

    @property
    def engine(self) -> RewardEngine:
        """The default table's engine (what a single-table server scores with)."""
        engine = self.tables.default_engine()
        assert engine is not None, "the default table is not resident"
        return engine

    @property
    def queued_items(self) -> int:
        return self._pending_items

    def queued_by_job(self) -> dict[str, int]:
        return {name: queue.items for name, queue in self._jobs.items()}

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

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
        for queue in self._jobs.values():
            while queue.requests:
                request = queue.requests.popleft()
                if not request.future.done():
                    request.future.set_exception(BatcherStopped("the reward server is shutting down"))
        self._jobs.clear()
        self._pending_items = 0
        self._host.shutdown(wait=True)
        self._device.shutdown(wait=True)

    async def submit(
        self,
        items: Sequence[PreparedItem],
        *,
        table: str | None = DEFAULT_TABLE,
        job: str = "default",
        priority: int = 0,
        deadline_s: float | None = None,
    ) -> RequestOutcome:
        """Queue ``items`` (all for ``table``; None: items that need no table) for ``job`` and await
        their results. ``deadline_s``: seconds until the job's training batch is due."""
        if self._wakeup is None or self._worker is None or self._worker.done():
            raise BatcherStopped("the batcher is not running")
        queue = self._jobs.get(job)
        queued = queue.items if queue is not None else 0
        if self._pending_items and self._pending_items + len(items) > self.max_queue_items:
            raise QueueFull(
                f"{self._pending_items} items are already queued (limit {self.max_queue_items}); retry shortly"
            )
        if self.job_queue_items is not None and queued and queued + len(items) > self.job_queue_items:
            raise QueueFull(
                f"job {job!r} has {queued} items queued (its limit is {self.job_queue_items}, "
                "--job-queue-items); retry shortly"
            )
        if queue is None:
            queue = self._jobs[job] = _JobQueue(job, turn=self._next_turn())
        self._last_seen[job] = time.perf_counter()
        deadline = time.perf_counter() + deadline_s if deadline_s is not None else math.inf
        request = _Request(items, table, job, priority, deadline, asyncio.get_running_loop().create_future())
        first = not self._pending_items
        queue.requests.append(request)
        queue.items += len(items)
        self._pending_items += len(items)
        if table is not None and self.tables.engine(table) is None:
            request.load_started = time.perf_counter()
            self.tables.ensure_loading(table)
        # Wake the worker only when it has something new to decide: the first request of a batch
        # (start its wait) or a full batch (stop waiting). Waking it for every arrival of a burst
        # of one-item requests cost a wake-up, a timer and a task each.
        if first or self._pending_items >= self.max_batch_items:
            self._wakeup.set()
        return await request.future

    def _next_turn(self) -> int:
        self._turns += 1
        return self._turns

    # --- building a fair batch ----------------------------------------------------------------

    def _ready(self, request: _Request) -> bool:
        return request.table is None or self.tables.engine(request.table) is not None

    def _first_ready(self, queue: _JobQueue) -> _Request | None:
        """The job's first request that can run now (its table is resident); requests whose client
        went away are dropped on the way."""
        while queue.requests and queue.requests[0].future.done():
            self._take(queue, queue.requests[0])
        for index, request in enumerate(queue.requests):
            if index >= MAX_SCAN:
                return None
            if not request.future.done() and self._ready(request):
                return request
        return None

    def _take(self, queue: _JobQueue, request: _Request) -> None:
        if queue.requests and queue.requests[0] is request:
            queue.requests.popleft()
        else:
            queue.requests.remove(request)
        queue.items -= request.size
        self._pending_items -= request.size

    def _take_fair(self) -> list[_Request]:
        """Deficit round robin over the jobs that have a ready request (module docstring).

        The batch's size is a target, not a cap: rounds go on until it is reached, the request
        that reaches it may overshoot it (up to ``max_batch_items``), so a job whose requests are
        larger than its quantum is never starved into near-empty batches."""
        heads = {name: self._first_ready(q) for name, q in self._jobs.items()}
        active = [self._jobs[name] for name, head in heads.items() if head is not None]
        if not active:
            return []
        active.sort(key=lambda q: (-heads[q.name].priority, heads[q.name].deadline, q.turn))  # type: ignore[union-attr]
        # A lone job gets whole batches (throughput); jobs that share get smaller ones, so that a
        # small job's request waits for one short batch, not a long one of a flooding job's items.
        target = self.max_batch_items if self._sharing() <= 1 else self.shared_batch_items
        quantum = max(1.0, target / len(active))
        batch: list[_Request] = []
        size = 0
        first = heads[active[0].name]
        if first is not None and first.size >= self.max_batch_items:  # a request of a whole batch runs alone
            self._take(active[0], first)
            batch, size = [first], first.size
        while size < target:
            for queue in active:
                queue.deficit += quantum
                while size < target and (head := self._first_ready(queue)) is not None:
                    if head.size > queue.deficit or size + head.size > self.max_batch_items:
                        break
                    self._take(queue, head)
                    queue.deficit -= head.size
                    batch.append(head)
                    size += head.size
            if not any((h := self._first_ready(q)) is not None and size + h.size <= self.max_batch_items
                       for q in active):
                break  # nothing else fits; otherwise another round (the deficits grow)
        for queue in active:
            if self._first_ready(queue) is None:
                queue.deficit = 0.0  # DRR: a job with nothing ready keeps no credit
        active[0].turn = self._next_turn()  # first this time, last among equals next time
        for name in [name for name, queue in self._jobs.items() if not queue.requests]:
            del self._jobs[name]
        return batch

    def _load_waiting(self) -> None:
        """Start loading the table of the oldest request that waits for one (its table was evicted
        after it arrived, or it arrived while another load ran). One load at a time: the registry
        serialises them, and each finished load wakes this worker to score what it made ready."""
        waiting: _Request | None = None
        for queue in self._jobs.values():
            for index, request in enumerate(queue.requests):
                if index >= MAX_SCAN:
                    break
                if request.table is not None and not request.future.done() and not self._ready(request):
                    if waiting is None or request.enqueued < waiting.enqueued:
                        waiting = request
                    break
        if waiting is not None and waiting.table is not None:
            if waiting.load_started is None:
                waiting.load_started = time.perf_counter()
            self.tables.ensure_loading(waiting.table)

    def _sharing(self) -> int:
        """How many jobs use the device now: queued work, or a submit within SHARE_WINDOW_S."""
        now = time.perf_counter()
        for job in [job for job, seen in self._last_seen.items() if now - seen > SHARE_WINDOW_S]:
            if job not in self._jobs:
                del self._last_seen[job]
        return len(set(self._jobs) | set(self._last_seen))

    def _oldest_ready(self) -> float | None:
        oldest = None
        for queue in self._jobs.values():
            head = self._first_ready(queue)
            if head is not None and (oldest is None or head.enqueued < oldest):
                oldest = head.enqueued
        return oldest

    async def _run(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        previous: asyncio.Task[None] | None = None  # the batch whose device stage may still run
        while True:
            self._load_waiting()
            oldest = self._oldest_ready()
            if oldest is None:  # nothing queued, or only requests waiting for their table
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            wait_left = oldest + self.max_wait_s - time.perf_counter()
            if wait_left > 0 and self._pending_items < self.max_batch_items:
                self._wakeup.clear()
                timer = loop.call_later(wait_left, self._wakeup.set)  # cheaper than wait_for's task
                try:
                    await self._wakeup.wait()
                finally:
                    timer.cancel()
                continue
            batch = self._take_fair()
            if not batch:
                continue
            if self.device_error is not None:
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(BatcherStopped(f"the scoring device failed: {self.device_error}"))
                continue
            # At most two batches in flight: this one's host stage overlaps the previous one's device
            # stage; the next batch is taken once this one is tokenized and the previous one is done.
            host_done = asyncio.Event()
            current = asyncio.create_task(self._pipeline(loop, batch, previous, host_done))
            await host_done.wait()
            if previous is not None:
                await previous
            previous = current

    # --- scoring: a host stage and a device stage, overlapped ----------------------------------

    def _host_stage(self, batch: list[_Request]) -> _Pass:
        """On the host thread: rule-scored requests, and each table's sub-batch up to its kernel
        input (answer spans tokenized, truths' states, the packed buffer)."""
        scoring = _Pass(batch, report=BatchReport(items=sum(r.size for r in batch)))
        started = time.perf_counter()
        for index, request in enumerate(batch):
            if request.table is None:
                scoring.results[index] = (score_inline(request.items), None)
                for item in request.items:
                    task = item.truth.family.name
                    scoring.report.task_counts[task] = scoring.report.task_counts.get(task, 0) + 1
        scoring.report.rules_seconds += time.perf_counter() - started
        by_table: dict[str, list[int]] = {}
        for index, request in enumerate(batch):
            if request.table is not None:
                by_table.setdefault(request.table, []).append(index)
        for name, indices in by_table.items():
            engine = self.tables.engine(name)
            if engine is None or engine.closed:  # evicted between choosing and running: load it again
                raise _Evicted(name)
            items = [item for i in indices for item in batch[i].items]
            scoring.tables.append((engine, indices, engine.begin(items)))
        return scoring

    def _device_stage(self, scoring: _Pass) -> _Pass:
        """On the device thread, one batch at a time: each table's kernel and the combination."""
        for engine, indices, part in scoring.tables:
            if engine.closed:
                raise _Evicted(engine.table.source)
            results, report = engine.finish(part)
            scoring.report.merge(report)
            info = engine.table.info()
            offset = 0
            for i in indices:
                count = scoring.batch[i].size
                scoring.results[i] = (results[offset : offset + count], info)
                offset += count
        return scoring

    async def _score(self, loop: asyncio.AbstractEventLoop, batch: list[_Request]) -> None:
        """Both stages of one batch, in order (the fallback path: one request at a time)."""
        started = time.perf_counter()
        try:
            scoring = await loop.run_in_executor(self._host, self._host_stage, batch)
            scoring = await loop.run_in_executor(self._device, self._device_stage, scoring)
        except Exception as exc:  # noqa: BLE001 - handled per kind below
            await self._failed(loop, batch, exc)
            return
        self._answer(scoring, started)

    async def _pipeline(self, loop: asyncio.AbstractEventLoop, batch: list[_Request],
                        previous: asyncio.Task[None] | None, host_done: asyncio.Event) -> None:
        """This batch's host stage runs while the previous batch's device stage does; its own device
        stage starts when that one has finished (one kernel at a time: order and memory bounded)."""
        started = time.perf_counter()
        try:
            scoring = await loop.run_in_executor(self._host, self._host_stage, batch)
        except Exception as exc:  # noqa: BLE001
            host_done.set()
            if previous is not None:
                await previous
            await self._failed(loop, batch, exc)
            return
        host_done.set()
        if previous is not None:
            await previous
        try:
            scoring = await loop.run_in_executor(self._device, self._device_stage, scoring)
        except Exception as exc:  # noqa: BLE001
            await self._failed(loop, batch, exc)
            return
        self._answer(scoring, started)

    async def _failed(self, loop: asyncio.AbstractEventLoop, batch: list[_Request], exc: BaseException) -> None:
        if isinstance(exc, _Evicted):  # rare: put them back, their table loads again
            for request in batch:
                if not request.future.done():
                    self._requeue(request)
            self._wake()
            return
        if isinstance(exc, DeviceError):  # the device is gone: say so to every waiter, stay down
            self.device_error = exc
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(BatcherStopped(f"the scoring device failed: {exc}"))
            return
        if len(batch) > 1:  # rescore request by request: one bad request must not fail its neighbours
            for request in batch:
                await self._score(loop, [request])
            return
        if not batch[0].future.done():
            batch[0].future.set_exception(exc)

    def _answer(self, scoring: _Pass, started: float) -> None:
        elapsed = time.perf_counter() - started
        total = scoring.report.items
        for index, request in enumerate(scoring.batch):
            results, table = scoring.results[index]
            if not request.future.done():
                load = self._waited_for_table(request, started)
                request.future.set_result(RequestOutcome(
                    results=results, table=table, queue_seconds=started - request.enqueued, batch_items=total,
                    report=scoring.report, table_load_seconds=load,
                ))
        if self._on_batch is not None:
            try:
                self._on_batch(scoring.report, total, elapsed)
            except Exception:  # a metrics bug must not stop the scoring worker
                log.exception("batch listener failed")

    def _waited_for_table(self, request: _Request, started: float) -> float:
        """How long ``request`` waited for its table's load: from when it found the table out of
        memory to when the load finished (not to when its batch started: the coalescing wait
        after the load is queue time, not load time)."""
        if request.load_started is None or request.table is None:
            return 0.0
        ready_at = self.tables.entries[request.table].ready_at
        end = started if ready_at is None or ready_at < request.load_started else min(ready_at, started)
        return max(0.0, end - request.load_started)

    def _requeue(self, request: _Request) -> None:
        queue = self._jobs.get(request.job)
        if queue is None:
            queue = self._jobs[request.job] = _JobQueue(request.job, turn=0)
        queue.requests.appendleft(request)
        queue.items += request.size
        self._pending_items += request.size
        request.load_started = request.load_started or time.perf_counter()


@dataclass
class _Pass:
    """One batch between its host stage and its device stage."""

    batch: list[_Request]
    report: BatchReport
    results: dict[int, tuple[list[ItemReward], dict | None]] = field(default_factory=dict)
    tables: list[tuple[RewardEngine, list[int], ScoringPass]] = field(default_factory=list)


class _Evicted(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


__all__ = ["BatchListener", "Batcher", "BatcherStopped", "QueueFull", "RequestOutcome", "single_table"]
