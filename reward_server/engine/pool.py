"""Worker processes for the reward families that may hang (``runs = POOL``: math), each item under a
deadline (SPEC §13a).

``math-verify`` cannot run inline: its own timeouts use ``signal.alarm``, which works only on a
process's main thread, and known inputs hang sympy past them (Math-Verify issue #65). So each
verification runs in a worker process of a pebble ``ProcessPool``: a worker that overruns
``timeout_s`` is killed and replaced by pebble, and its item scores 0 with ``timed_out``. Nothing
else ever waits on a worker: the service sends pooled items here directly, beside (never inside)
the table's device batches.

Why these choices:

* pebble (a kept library) rather than ``concurrent.futures``: a ``ProcessPoolExecutor`` cannot
  kill one task's worker, and a killed worker breaks the whole executor.
* ``forkserver``: the server process holds torch's and the tokenizer's threads, and forking a
  threaded process can deadlock the child; a forkserver forks from a small clean process.
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
import threading
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
_REGISTRY: Any = None  # in a worker: the family registry, built by _init_worker


def _init_worker(modules: tuple[str, ...]) -> None:
    """Runs once in each new worker: lower its priority, build the registry it scores with, and
    warm up the pooled families (their imports must not eat the first item's deadline)."""
    global _REGISTRY
    try:
        os.nice(WORKER_NICENESS)
    except OSError:  # not permitted: run at normal priority
        pass
    from reward_server.rewards.family import Runs
    from reward_server.rewards.registry import build_registry

    _REGISTRY = build_registry(modules)
    for family in _REGISTRY.families():
        if family.runs is Runs.POOL:
            try:
                family.warm_up()
            except Exception:  # a family whose extra is missing: its items answer 422 in the server
                log.debug("%s: warm-up failed", family.name, exc_info=True)


def _score_in_worker(family: str, span: str, truth: Any, options: ResolvedOptions) -> Score:
    """One item, in a worker process."""
    return _REGISTRY[family].score(span, truth, options)


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
        self._lock = threading.Lock()

    def _started(self) -> Any:
        with self._lock:
            if self._pool is None:
                import pebble

                context = multiprocessing.get_context("forkserver")
                self._pool = pebble.ProcessPool(
                    max_workers=self.workers, initializer=_init_worker, initargs=(self.modules,), context=context,
                )
            return self._pool

    def submit(self, item: PreparedItem) -> Future[Score]:
        """The item's score, later: a timeout becomes ``Score(0, timed_out=True)``; a client error
        raised by the family in the worker (a truth that parses to nothing) is raised by the future."""
        family = item.truth.family.name
        scheduled = self._started().schedule(
            _score_in_worker, args=(family, answer_span(item.response), item.truth.parsed, item.options),
            timeout=self.timeout_s,
        )
        result: Future[Score] = Future()

        def settle(done: Future[Score]) -> None:
            try:
                result.set_result(done.result())
            except FutureTimeout:
                self.timeouts += 1
                log.warning("%s: a verification overran %.1f s; its worker was replaced", family, self.timeout_s)
                if self.on_timeout is not None:
                    self.on_timeout(family)
                result.set_result(Score(0.0, timed_out=True))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller as it is
                result.set_exception(exc)

        scheduled.add_done_callback(settle)
        return result

    async def score(self, items: Sequence[PreparedItem]) -> list[Score | BaseException]:
        """Every item's score, or the exception its family raised (in item order)."""
        futures = [asyncio.wrap_future(self.submit(item)) for item in items]
        return list(await asyncio.gather(*futures, return_exceptions=True))

    def score_blocking(self, items: Sequence[PreparedItem]) -> list[Score]:
        """Every item's score, waiting (the offline commands); a family's exception is raised."""
        futures = [self.submit(item) for item in items]
        return [future.result() for future in futures]

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.stop()
            pool.join(timeout=10)


__all__ = ["ScorerPool"]
