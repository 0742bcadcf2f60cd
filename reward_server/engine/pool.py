"""Worker processes for the reward families that may hang (``runs = POOL``: math), each item under a
deadline (SPEC §13a).

``math-verify`` cannot run inline: its own timeouts use ``signal.alarm``, which works only on a
process's main thread, and known inputs hang sympy past them (Math-Verify issue #65). So each
verification runs in a worker process of a pebble ``ProcessPool``, on the worker's main thread,
under ``timeout_s``: an item that overruns scores 0 with ``timed_out``. Nothing else ever waits on
a worker: the service sends pooled items here directly, beside (never inside) the table's device
batches.

Why these choices:

* pebble (a kept library) rather than ``concurrent.futures``: a ``ProcessPoolExecutor`` cannot
  kill one task's worker, and a killed worker breaks the whole executor.
* Two deadlines. In the worker, ``SIGALRM`` stops an item at ``timeout_s`` (sympy's hang in issue
  #65 is Python code and stops at once; the worker stays, warm); the exception is a
  ``BaseException`` so that no ``except Exception`` in a library swallows it. A verification stuck
  where a signal cannot reach it (inside one C call) is caught by pebble's own timeout, which kills
  the worker and starts another. A worker that dies under an item (a crash in the verifier) is
  treated the same way: a response is model output and always gets a finite score (SPEC §13), so
  the item scores 0 with ``timed_out`` (its verification did not finish) instead of failing the
  request.
* Items travel in chunks (up to ``CHUNK_ITEMS``, spread over the workers), not one task each: a
  pebble task costs about a millisecond of pickling and pipe traffic in the server process, as
  much as a verification. Each item of a chunk has its own deadline; a chunk stops after an item
  that overran, or once it has run ``timeout_s``, and the server sends the rest again. A chunk
  pebble had to kill is sent again one item per task. So an item is ``timed_out`` only when it
  overruns on its own (SPEC §13a: the verdict never depends on the batch).
* Identical items of one call (same family, answer span, truth and options: GRPO groups repeat
  short answers) are verified once and share the score, which cannot differ: scoring is a pure
  function of those four.
* ``forkserver``: the server process holds torch's and the tokenizer's threads, and forking a
  threaded process can deadlock the child; a forkserver forks from a small clean process. Workers
  never import torch (``reward_server.engine`` imports its modules lazily): a worker starts in
  about a second and holds ~120 MB.
* Workers run niced: verification is CPU-bound, and on a small machine it must not take the cores
  the latency-sensitive open-ended path needs.
* Workers are started on first use, so a server that never sees a math item pays nothing.
* A worker rebuilds the family registry from the same ``--rewards-module`` files, so a user's
  pooled family works exactly like a built-in one; items travel as (family name, answer span,
  parsed truth, options), all plain data.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from reward_server.rewards.family import Score
from reward_server.rewards.options import ResolvedOptions
from reward_server.rewards.scoring import PreparedItem
from reward_server.rewards.spans import answer_span

log = logging.getLogger("reward_server.pool")

WORKER_NICENESS = 10
CHUNK_ITEMS = 16
KILL_GRACE_S = 1.0  # pebble's kill comes this long after the latest a chunk can legitimately end

Work = tuple[str, str, Any, ResolvedOptions]  # (family name, answer span, parsed truth, options)
_REGISTRY: Any = None  # in a worker: the family registry, built by _init_worker


class _Overrun(BaseException):
    """Raised in a worker by SIGALRM at an item's deadline."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise _Overrun


def _init_worker(modules: tuple[str, ...]) -> None:
    """Runs once in each new worker: lower its priority, arm the deadline signal, build the
    registry it scores with, and warm up the pooled families (their imports must not eat the first
    item's deadline)."""
    global _REGISTRY
    try:
        os.nice(WORKER_NICENESS)
    except OSError:  # not permitted: run at normal priority
        pass
    signal.signal(signal.SIGALRM, _on_alarm)
    from reward_server.rewards.family import Runs
    from reward_server.rewards.registry import build_registry

    _REGISTRY = build_registry(modules)
    for family in _REGISTRY.families():
        if family.runs is Runs.POOL:
            try:
                family.warm_up()
            except Exception:  # a family whose extra is missing: its items answer 422 in the server
                log.debug("%s: warm-up failed", family.name, exc_info=True)


def _score_chunk_in_worker(work: Sequence[Work], timeout_s: float) -> list[Score | Exception]:
    """The scores of a prefix of ``work``, in a worker process: each item under ``timeout_s``; it
    stops after an item that overran or once the chunk has run ``timeout_s`` (the server sends the
    rest again). A family's client error (a truth that parses to nothing) belongs to its item."""
    started = time.monotonic()
    scores: list[Score | Exception] = []
    for family, span, truth, options in work:
        if scores and time.monotonic() - started >= timeout_s:
            break
        try:
            signal.setitimer(signal.ITIMER_REAL, timeout_s)
            try:
                scores.append(_REGISTRY[family].score(span, truth, options))
            except Exception as exc:  # noqa: BLE001 - handed to the item's caller as it is
                scores.append(exc)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except _Overrun:
            scores.append(Score(0.0, timed_out=True))
            break
    return scores


class ScorerPool:
    """Pooled families' items scored in worker processes, each under ``timeout_s``.

    ``on_timeout(family_name)`` is called (from a pebble thread) for each overrun, for metrics.
    """

    def __init__(
        self,
        workers: int = 2,
        timeout_s: float = 5.0,
        modules: Sequence[str] = (),
        on_timeout: Callable[[str], None] | None = None,
    ) -> None:
        self.workers = workers
        self.timeout_s = timeout_s
        self.modules = tuple(modules)
        self.on_timeout = on_timeout
        self.timeouts = 0
        self._pool: Any = None
        self._closed = False
        self._lock = threading.Lock()

    def _started(self) -> Any:
        with self._lock:
            if self._closed:  # a chunk sent again after close() must not start a new pool
                raise RuntimeError("the scorer pool is closed")
            if self._pool is None:
                import pebble

                context = multiprocessing.get_context("forkserver")
                self._pool = pebble.ProcessPool(
                    max_workers=self.workers, initializer=_init_worker, initargs=(self.modules,), context=context,
                )
            return self._pool

    def submit_all(self, items: Sequence[PreparedItem]) -> list[Future[Score]]:
        """Each item's score, later (in item order): an overrun is ``Score(0, timed_out=True)``; a
        client error raised by the family in the worker is raised by that item's future."""
        slots: list[int] = []
        distinct: dict[Work, int] = {}
        work: list[Work] = []
        for item in items:
            entry: Work = (item.truth.family.name, answer_span(item.response), item.truth.parsed, item.options)
            try:
                slot = distinct.setdefault(entry, len(work))
            except TypeError:  # an unhashable parsed truth (a plug-in's dict): verified on its own
                slot = len(work)
            if slot == len(work):
                work.append(entry)
            slots.append(slot)
        futures: list[Future[Score]] = [Future() for _ in work]
        size = max(1, min(CHUNK_ITEMS, -(-len(work) // max(1, self.workers))))
        for start in range(0, len(work), size):
            self._run_chunk(work[start:start + size], futures[start:start + size])
        return [futures[slot] for slot in slots]

    def submit(self, item: PreparedItem) -> Future[Score]:
        return self.submit_all([item])[0]

    def _run_chunk(self, work: Sequence[Work], futures: Sequence[Future[Score]]) -> None:
        try:
            scheduled = self._started().schedule(
                _score_chunk_in_worker, args=(list(work), self.timeout_s),
                timeout=(1 if len(work) == 1 else 2) * self.timeout_s + KILL_GRACE_S,  # its longest legitimate run
            )
        except BaseException as exc:  # noqa: BLE001 - a closed pool: every item says so
            for future in futures:
                future.set_exception(exc)
            return

        def settle(done: Future[list[Score | Exception]]) -> None:
            from pebble import ProcessExpired

            try:
                scores = done.result()
            except (FutureTimeout, ProcessExpired) as exc:  # stuck where no signal reaches, or the
                # worker died (a crash in the verifier); either way pebble starts another
                if len(work) == 1:
                    what = ("its worker was killed and replaced" if isinstance(exc, FutureTimeout)
                            else f"its worker died ({exc}) and was replaced")
                    self._overran(work[0][0], what)
                    futures[0].set_result(Score(0.0, timed_out=True))
                else:  # which one? each again alone
                    for entry, future in zip(work, futures):
                        self._run_chunk([entry], [future])
                return
            except BaseException as exc:  # noqa: BLE001 - handed to the callers as it is
                for future in futures:
                    future.set_exception(exc)
                return
            for entry, score, future in zip(work, scores, futures):
                if isinstance(score, BaseException):
                    future.set_exception(score)
                    continue
                if score.timed_out:
                    self._overran(entry[0], "it was stopped")
                future.set_result(score)
            if len(scores) < len(work):
                self._run_chunk(work[len(scores):], futures[len(scores):])

        scheduled.add_done_callback(settle)

    def _overran(self, family: str, what: str) -> None:
        self.timeouts += 1
        log.warning("%s: a verification overran %.1f s; %s", family, self.timeout_s, what)
        if self.on_timeout is not None:
            self.on_timeout(family)

    async def score(self, items: Sequence[PreparedItem]) -> list[Score | BaseException]:
        """Every item's score, or the exception its family raised (in item order)."""
        futures = [asyncio.wrap_future(future) for future in self.submit_all(items)]
        return list(await asyncio.gather(*futures, return_exceptions=True))

    def score_blocking(self, items: Sequence[PreparedItem]) -> list[Score]:
        """Every item's score, waiting (the offline commands); a family's exception is raised."""
        return [future.result() for future in self.submit_all(items)]

    def close(self) -> None:
        with self._lock:
            pool, self._pool, self._closed = self._pool, None, True
        if pool is not None:
            pool.stop()
            pool.join(timeout=10)


__all__ = ["ScorerPool"]
