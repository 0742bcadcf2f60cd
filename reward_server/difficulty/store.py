"""The per-prompt difficulty state: SQLite (WAL) on disk, a mirror in memory, one writer thread.

Why this shape:

* Durability before acknowledgement. ``/score`` answers only after the posterior updates of its
  items are committed, so ``kill -9`` can never lose an update a trainer was told about.
* Throughput. A commit costs an ``fsync``; one per request would cap a trainer that sends one
  sample per request (OpenRLHF, slime) at the disk's fsync rate. So every update goes through one
  queue, and a single writer thread commits *everything queued so far* in one transaction (group
  commit): while one fsync runs, the next requests pile up and share the next one. No timer is
  waited on; under light load a commit holds one request, under heavy load hundreds.
* One writer means updates to the same prompt are serialised: concurrent requests lose nothing.
* Reads (``get``, ``sample``, export, metrics) are served from the in-memory mirror, which the
  writer updates only *after* a commit succeeded, so nothing not yet durable is ever shown.

WAL and ``synchronous``: in WAL mode ``synchronous=NORMAL`` writes each commit to the WAL file
without an fsync; that survives the process being killed (the bytes are in the OS page cache),
but not a power cut or kernel crash, which can lose the last commits. ``FULL`` fsyncs the WAL on
every commit, which also survives those. The default is ``full``: with group commit its cost is
one fsync per *batch* of requests (bench/difficulty_throughput.py measures both).
"""

from __future__ import annotations

import logging
import math
import queue
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from reward_server.difficulty import posterior
from reward_server.difficulty.posterior import DecayParams, PromptState
from reward_server.difficulty.sampler import thompson_select
from reward_server.errors import StateUnavailable, UnknownPool

log = logging.getLogger("reward_server.difficulty")

Synchronous = Literal["full", "normal"]
INFORMATIVE_RANGE = (0.1, 0.9)  # estimated p in this range: a group of 8 has signal with probability >= 57%
P_BUCKETS = tuple(round(0.1 * i, 1) for i in range(1, 11))  # 0.1 .. 1.0, the gauge histogram's bounds

_SCHEMA = """
CREATE TABLE IF NOT EXISTS prompts (
    prompt_id TEXT PRIMARY KEY,
    alpha REAL NOT NULL,
    beta REAL NOT NULL,
    n INTEGER NOT NULL,
    successes INTEGER NOT NULL,
    clock INTEGER NOT NULL,
    updated_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pools (
    name TEXT NOT NULL,
    position INTEGER NOT NULL,
    prompt_id TEXT NOT NULL,
    PRIMARY KEY (name, position)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
"""


class StoreClosed(StateUnavailable):
    """The store was closed; no further updates are accepted."""


@dataclass(frozen=True)
class Observation:
    """One scored rollout of one prompt."""

    prompt_id: str
    correct: bool


def view(state: PromptState, clock: int, params: DecayParams) -> dict[str, Any]:
    """The public form of a state (``GET /v1/prompts/{id}``, the export): values as of ``clock``."""
    alpha, beta = posterior.at_clock(state, clock, params)
    return {
        "prompt_id": state.prompt_id,
        "alpha": alpha,
        "beta": beta,
        "n": state.n,
        "successes": state.successes,
        "estimated_p": posterior.mean(alpha, beta),
        "last_update": state.updated_at,
        "last_update_clock": state.clock,
    }


class DifficultyStore:
    """Thread-safe. ``submit`` returns a Future resolved once the update is durable."""

    def __init__(self, path: str | Path, params: DecayParams, synchronous: Synchronous = "full") -> None:
        if synchronous not in ("full", "normal"):
            raise ValueError("synchronous must be 'full' or 'normal'")
        self.path = Path(path)
        self.params = params
        self.synchronous = synchronous
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise RuntimeError(f"{self.path}: SQLite refused WAL mode (got {mode!r}); use a local filesystem")
        self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()  # guards the mirror
        self._states: dict[str, PromptState] = {
            row[0]: PromptState(row[0], row[1], row[2], row[3], row[4], row[5], row[6])
            for row in self._db.execute("SELECT prompt_id, alpha, beta, n, successes, clock, updated_at FROM prompts")
        }
        self._pools: dict[str, list[str]] = {}
        for name, prompt_id in self._db.execute("SELECT name, prompt_id FROM pools ORDER BY name, position"):
            self._pools.setdefault(name, []).append(prompt_id)
        clock = self._db.execute("SELECT value FROM meta WHERE key = 'clock'").fetchone()
        self._clock = int(clock[0]) if clock else 0
        self._queue: queue.SimpleQueue[tuple[str, Any, Future[None]] | None] = queue.SimpleQueue()
        self._closed = False
        self.commits = 0  # transactions committed, for the benchmark and tests
        self._writer = threading.Thread(target=self._write_loop, name="difficulty-writer", daemon=True)
        self._writer.start()

    # --- writes ---------------------------------------------------------------------------------

    def submit(self, observations: Sequence[Observation]) -> Future[None]:
        return self._enqueue("observe", list(observations))

    def record(self, observations: Sequence[Observation]) -> None:
        """Blocking form of :meth:`submit`."""
        self.submit(observations).result()

    def register_pool(self, name: str, prompt_ids: Sequence[str]) -> Future[None]:
        """Replace the pool ``name`` with ``prompt_ids`` (durable when the future resolves)."""
        return self._enqueue("pool", (name, list(prompt_ids)))

    def _enqueue(self, kind: str, payload: Any) -> Future[None]:
        future: Future[None] = Future()
        if self._closed:
            future.set_exception(StoreClosed("the difficulty store is closed"))
            return future
        self._queue.put((kind, payload, future))
        return future

    def _write_loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while True:  # everything queued while the last commit ran joins this one
                try:
                    entry = self._queue.get_nowait()
                except queue.Empty:
                    break
                if entry is None:
                    stop = True
                    break
                batch.append(entry)
            self._commit(batch)
            if stop:
                return

    def _commit(self, batch: list[tuple[str, Any, Future[None]]]) -> None:
        # Only this thread mutates the mirror, so it reads it without the lock.
        clock = self._clock
        base = self._states
        now = time.time()
        changed: dict[str, PromptState] = {}
        pools: dict[str, list[str]] = {}
        for kind, payload, _ in batch:
            if kind == "observe":
                for obs in payload:
                    clock += 1
                    state = changed.get(obs.prompt_id) or base.get(obs.prompt_id)
                    if state is None:
                        state = posterior.fresh(obs.prompt_id, self.params, clock, now)
                    changed[obs.prompt_id] = posterior.observe(state, obs.correct, clock, self.params, now)
            else:
                name, ids = payload
                pools[name] = ids
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "INSERT OR REPLACE INTO prompts VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(s.prompt_id, s.alpha, s.beta, s.n, s.successes, s.clock, s.updated_at) for s in changed.values()],
            )
            for name, ids in pools.items():
                self._db.execute("DELETE FROM pools WHERE name = ?", (name,))
                self._db.executemany(
                    "INSERT INTO pools VALUES (?, ?, ?)", [(name, i, pid) for i, pid in enumerate(ids)]
                )
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('clock', ?)", (str(clock),))
            self._db.execute("COMMIT")
        except Exception as exc:
            log.exception("difficulty state: commit failed")
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            for _, _, future in batch:
                future.set_exception(exc)
            return
        with self._lock:
            self._states.update(changed)
            self._pools.update(pools)
            self._clock = clock
        self.commits += 1
        for _, _, future in batch:
            future.set_result(None)

    # --- reads (from the mirror: only committed updates) ------------------------------------------

    @property
    def clock(self) -> int:
        return self._clock

    def get(self, prompt_id: str) -> dict[str, Any] | None:
        with self._lock:
            state, clock = self._states.get(prompt_id), self._clock
        return None if state is None else view(state, clock, self.params)

    def pool(self, name: str) -> list[str] | None:
        with self._lock:
            ids = self._pools.get(name)
        return None if ids is None else list(ids)

    def pools(self) -> dict[str, int]:
        with self._lock:
            return {name: len(ids) for name, ids in self._pools.items()}

    def sample(self, candidates: Sequence[str], k: int, seed: int | None = None) -> list[str]:
        """``k`` distinct ids of ``candidates`` (deduplicated, order kept) by Thompson sampling;
        a never-seen candidate is drawn from the prior."""
        unique = list(dict.fromkeys(candidates))
        with self._lock:
            states = [self._states.get(pid) for pid in unique]
            clock = self._clock
        alphas, betas = [], []
        for state in states:
            if state is None:
                alphas.append(self.params.prior_alpha)
                betas.append(self.params.prior_beta)
            else:
                a, b = posterior.at_clock(state, clock, self.params)
                alphas.append(a)
                betas.append(b)
        return [unique[i] for i in thompson_select(alphas, betas, k, seed)]

    def sample_pool(self, name: str, k: int, seed: int | None = None) -> list[str]:
        ids = self.pool(name)
        if ids is None:
            raise UnknownPool(f"pool {name!r} is not registered")
        return self.sample(ids, k, seed)

    def export_rows(self) -> Iterator[dict[str, Any]]:
        """Every tracked prompt, sorted by id, values as of the current clock."""
        with self._lock:
            states, clock = list(self._states.values()), self._clock
        for state in sorted(states, key=lambda s: s.prompt_id):
            yield view(state, clock, self.params)

    def summary(self) -> dict[str, Any]:
        """For the metrics: prompts tracked, counts of estimated p per bucket, informative share."""
        with self._lock:
            states, clock = list(self._states.values()), self._clock
        return summarise_means(
            [posterior.mean(*posterior.at_clock(s, clock, self.params)) for s in states]
        )

    def close(self) -> None:
        """Commit what is queued, stop the writer, close the database. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._writer.join()
        self._db.close()


def summarise_means(means: Iterable[float]) -> dict[str, Any]:
    values = list(means)
    counts = [0] * len(P_BUCKETS)
    informative = 0
    lo, hi = INFORMATIVE_RANGE
    for p in values:
        # bucket i holds (0.1 i, 0.1 (i + 1)], the first also 0: cumulative counts for le=0.1..1.0
        counts[min(max(math.ceil(p * 10) - 1, 0), len(P_BUCKETS) - 1)] += 1
        informative += lo <= p <= hi
    return {
        "prompts": len(values),
        "buckets": counts,
        "sum": float(sum(values)),
        "informative": informative,
        "informative_share": informative / len(values) if values else 0.0,
    }
