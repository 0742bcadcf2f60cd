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

Per job (SPEC §15). Every posterior, every pool and the decay clock belong to one training job:
rows are keyed ``(job, prompt_id)``, so two jobs that use the same prompt ids never share a
posterior, and one job's progress never decays another's estimates (each job has its own clock).
A file written before jobs existed (schema 1: ``prompts`` keyed by ``prompt_id`` alone, no schema
version) is migrated in place when opened: its rows, pools and clock become job ``default``, the
job of a request that names none. The primary key changes, which SQLite cannot ``ALTER``, so the
tables are rebuilt, in one transaction with the version stamp (``meta.schema_version``): a process
killed mid-migration leaves the old file exactly as it was, and the next open migrates it again.

Idempotency (a retried request never counts twice). A trainer's client that lost the answer to a
``/score`` (the replica died after the commit, a timeout) sends the same request again, possibly to
another replica. Each request's observations therefore go to the store as one unit under the
request's idempotency key; the writer records ``(job, key)`` in ``applied_keys`` *in the same
transaction* as the posterior updates, and skips a unit whose key it has already applied, so the
update and the record of it are durable together or not at all. Keys are kept for
:data:`KEY_RETENTION_S` (24 h) and at most the newest :data:`MAX_KEYS`: a key only has to outlive
the retries of its request, which the project's clients stop at the call's deadline (10 minutes
by default), and a day also covers slower clients; the count bound caps the file (about 130 bytes
a key) when a trainer sends many small keyed requests (1,000,000 keys last 400 s even at 2,500
keyed requests/s, the one-item benchmark's rate; batched clients send far fewer).
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
from reward_server.errors import StateUnavailable, UnknownPool, UsageError

log = logging.getLogger("reward_server.difficulty")

Synchronous = Literal["full", "normal"]
INFORMATIVE_RANGE = (0.1, 0.9)  # estimated p in this range: a group of 8 has signal with probability >= 57%
P_BUCKETS = tuple(round(0.1 * i, 1) for i in range(1, 11))  # 0.1 .. 1.0, the gauge histogram's bounds
DEFAULT_JOB = "default"  # a request naming no job acts as this one (service.auth.DEFAULT_JOB); old rows become it
SCHEMA_VERSION = 2  # 1: one job, prompts keyed by prompt_id (unversioned); 2: keyed by (job, prompt_id)
KEY_RETENTION_S = 24 * 3600.0  # an applied idempotency key is remembered this long (see the module docstring)
MAX_KEYS = 1_000_000  # ... and at most this many keys, the newest

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS prompts (
        job TEXT NOT NULL,
        prompt_id TEXT NOT NULL,
        alpha REAL NOT NULL,
        beta REAL NOT NULL,
        n INTEGER NOT NULL,
        successes INTEGER NOT NULL,
        clock INTEGER NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (job, prompt_id)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS pools (
        job TEXT NOT NULL,
        name TEXT NOT NULL,
        position INTEGER NOT NULL,
        prompt_id TEXT NOT NULL,
        PRIMARY KEY (job, name, position)
    ) WITHOUT ROWID""",
    "CREATE TABLE IF NOT EXISTS clocks (job TEXT PRIMARY KEY, clock INTEGER NOT NULL) WITHOUT ROWID",
    # A rowid table: rowids grow with every insert and the oldest rows are deleted first, so
    # "all but the newest MAX_KEYS" is one rowid range.
    """CREATE TABLE IF NOT EXISTS applied_keys (
        job TEXT NOT NULL,
        key TEXT NOT NULL,
        applied_at REAL NOT NULL,
        UNIQUE (job, key)
    )""",
    "CREATE INDEX IF NOT EXISTS applied_keys_by_time ON applied_keys (applied_at)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
)
_COLUMNS = "prompt_id, alpha, beta, n, successes, clock, updated_at"


class StoreClosed(StateUnavailable):
    """The store was closed; no further updates are accepted."""


class NewerSchema(UsageError):
    """The state file was written by a newer version of the service; this one will not guess
    (a start-up error naming the file: exit 2)."""


@dataclass(frozen=True)
class Observation:
    """One scored rollout of one prompt."""

    prompt_id: str
    correct: bool


def view(state: PromptState, clock: int, params: DecayParams, job: str = DEFAULT_JOB) -> dict[str, Any]:
    """The public form of a state (``GET /v1/prompts/{id}``, the export): values as of ``clock``
    (the job's clock), and the job it belongs to, so an export says whose posteriors it holds."""
    alpha, beta = posterior.at_clock(state, clock, params)
    return {
        "job": job,
        "prompt_id": state.prompt_id,
        "alpha": alpha,
        "beta": beta,
        "n": state.n,
        "successes": state.successes,
        "estimated_p": posterior.mean(alpha, beta),
        "last_update": state.updated_at,
        "last_update_clock": state.clock,
    }


def _schema_version(db: sqlite3.Connection) -> int | None:
    """The file's schema version: None for a new file, 1 for a file from before versions existed."""
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "meta" in tables:
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is not None:
            return int(row[0])
    if "prompts" in tables:
        columns = {row[1] for row in db.execute("PRAGMA table_info(prompts)")}
        return 1 if "job" not in columns else SCHEMA_VERSION
    return None


def _migrate_from_1(db: sqlite3.Connection) -> None:
    """Schema 1 -> 2 inside the caller's transaction: every row becomes job ``default``. The
    primary keys change, so the tables are rebuilt (renamed away, created anew, copied, dropped)."""
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    for old in ("prompts", "pools"):
        if old in tables:
            db.execute(f"ALTER TABLE {old} RENAME TO {old}_v1")
    for statement in _SCHEMA:
        db.execute(statement)
    if "prompts" in tables:
        db.execute(f"INSERT INTO prompts (job, {_COLUMNS}) SELECT ?, {_COLUMNS} FROM prompts_v1", (DEFAULT_JOB,))
        db.execute("DROP TABLE prompts_v1")
    if "pools" in tables:
        db.execute("INSERT INTO pools (job, name, position, prompt_id) SELECT ?, name, position, prompt_id "
                   "FROM pools_v1", (DEFAULT_JOB,))
        db.execute("DROP TABLE pools_v1")
    clock = db.execute("SELECT value FROM meta WHERE key = 'clock'").fetchone()
    if clock is not None:
        db.execute("INSERT OR REPLACE INTO clocks VALUES (?, ?)", (DEFAULT_JOB, int(clock[0])))
        db.execute("DELETE FROM meta WHERE key = 'clock'")


class DifficultyStore:
    """Thread-safe. ``submit`` returns a Future resolved once the update is durable."""

    def __init__(
        self, path: str | Path, params: DecayParams, synchronous: Synchronous = "full", *,
        key_retention_s: float = KEY_RETENTION_S, max_keys: int = MAX_KEYS,
    ) -> None:
        if synchronous not in ("full", "normal"):
            raise ValueError("synchronous must be 'full' or 'normal'")
        if key_retention_s <= 0 or max_keys < 1:
            raise ValueError("key_retention_s must be > 0 and max_keys >= 1")
        self.path = Path(path)
        self.params = params
        self.synchronous = synchronous
        self.key_retention_s = float(key_retention_s)
        self.max_keys = int(max_keys)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise RuntimeError(f"{self.path}: SQLite refused WAL mode (got {mode!r}); use a local filesystem")
        self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        try:
            self.migrated_from = self._open_schema()
        except BaseException:
            self._db.close()
            raise
        self._lock = threading.Lock()  # guards the mirror
        self._states: dict[tuple[str, str], PromptState] = {
            (row[0], row[1]): PromptState(*row[1:])
            for row in self._db.execute(f"SELECT job, {_COLUMNS} FROM prompts")
        }
        self._pools: dict[tuple[str, str], list[str]] = {}
        for job, name, prompt_id in self._db.execute("SELECT job, name, prompt_id FROM pools ORDER BY job, name, position"):
            self._pools.setdefault((job, name), []).append(prompt_id)
        self._clocks: dict[str, int] = dict(self._db.execute("SELECT job, clock FROM clocks"))
        self._queue: queue.SimpleQueue[tuple[str, Any, Future[Any]] | None] = queue.SimpleQueue()
        self._closed = False
        self.commits = 0  # transactions committed, for the benchmark and tests
        self._writer = threading.Thread(target=self._write_loop, name="difficulty-writer", daemon=True)
        self._writer.start()

    def _open_schema(self) -> int | None:
        """Create or migrate the tables, in one transaction; the version migrated from, or None.
        ``BEGIN IMMEDIATE`` first, so two processes opening one old file cannot both migrate it."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            version = _schema_version(db)
            if version is not None and version > SCHEMA_VERSION:
                raise NewerSchema(
                    f"{self.path}: state schema {version} is newer than this service's ({SCHEMA_VERSION}); "
                    "upgrade the service or use another --state-path"
                )
            if version == 1:
                log.warning("difficulty state %s: migrating schema 1 -> %d (rows become job %r)",
                            self.path, SCHEMA_VERSION, DEFAULT_JOB)
                _migrate_from_1(db)
            for statement in _SCHEMA:
                db.execute(statement)
            db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return version if version is not None and version < SCHEMA_VERSION else None

    # --- writes ---------------------------------------------------------------------------------

    def submit(
        self, observations: Sequence[Observation], job: str = DEFAULT_JOB, key: str | None = None
    ) -> Future[bool]:
        """Apply one request's observations for ``job`` as one unit. The future says whether they
        were applied (True) or skipped because ``key`` had been applied before (False: a retry);
        without a key they are always applied."""
        return self._enqueue("observe", (job, key, list(observations)))

    def record(self, observations: Sequence[Observation], job: str = DEFAULT_JOB, key: str | None = None) -> bool:
        """Blocking form of :meth:`submit`."""
        return self.submit(observations, job, key).result()

    def register_pool(self, name: str, prompt_ids: Sequence[str], job: str = DEFAULT_JOB) -> Future[None]:
        """Replace ``job``'s pool ``name`` with ``prompt_ids`` (durable when the future resolves)."""
        return self._enqueue("pool", (job, name, list(prompt_ids)))

    def _enqueue(self, kind: str, payload: Any) -> Future[Any]:
        future: Future[Any] = Future()
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

    def _key_applied(self, job: str, key: str) -> bool:
        return self._db.execute("SELECT 1 FROM applied_keys WHERE job = ? AND key = ?", (job, key)).fetchone() is not None

    def _commit(self, batch: list[tuple[str, Any, Future[Any]]]) -> None:
        # Only this thread mutates the mirror, so it reads it without the lock.
        now = time.time()
        clocks: dict[str, int] = {}
        changed: dict[tuple[str, str], PromptState] = {}
        pools: dict[tuple[str, str], list[str]] = {}
        answers: list[bool | None] = []
        try:
            self._db.execute("BEGIN IMMEDIATE")
            keyed = [payload[1] for kind, payload, _ in batch if kind == "observe" and payload[1] is not None]
            if keyed:  # forget expired keys first, so that a key older than the retention is new again
                self._db.execute("DELETE FROM applied_keys WHERE applied_at < ?", (now - self.key_retention_s,))
            seen: set[tuple[str, str]] = set()
            new_keys: list[tuple[str, str, float]] = []
            for kind, payload, _ in batch:
                if kind == "pool":
                    job, name, ids = payload
                    pools[(job, name)] = ids
                    answers.append(None)
                    continue
                job, key, observations = payload
                if key is not None:
                    if (job, key) in seen or self._key_applied(job, key):
                        answers.append(False)  # a retry of a request already applied: counts once
                        continue
                    seen.add((job, key))
                    new_keys.append((job, key, now))
                clock = clocks.get(job, self._clocks.get(job, 0))
                for obs in observations:
                    clock += 1
                    state = changed.get((job, obs.prompt_id)) or self._states.get((job, obs.prompt_id))
                    if state is None:
                        state = posterior.fresh(obs.prompt_id, self.params, clock, now)
                    changed[(job, obs.prompt_id)] = posterior.observe(state, obs.correct, clock, self.params, now)
                clocks[job] = clock
                answers.append(True)
            self._db.executemany(
                "INSERT OR REPLACE INTO prompts VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(job, s.prompt_id, s.alpha, s.beta, s.n, s.successes, s.clock, s.updated_at)
                 for (job, _), s in changed.items()],
            )
            for (job, name), ids in pools.items():
                self._db.execute("DELETE FROM pools WHERE job = ? AND name = ?", (job, name))
                self._db.executemany(
                    "INSERT INTO pools VALUES (?, ?, ?, ?)", [(job, name, i, pid) for i, pid in enumerate(ids)]
                )
            self._db.executemany("INSERT OR REPLACE INTO clocks VALUES (?, ?)", list(clocks.items()))
            if new_keys:
                self._db.executemany("INSERT INTO applied_keys VALUES (?, ?, ?)", new_keys)
                self._db.execute(
                    "DELETE FROM applied_keys WHERE rowid <= (SELECT max(rowid) FROM applied_keys) - ?",
                    (self.max_keys,),
                )
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
            self._clocks.update(clocks)
        self.commits += 1
        for (_, _, future), answer in zip(batch, answers):
            future.set_result(answer)

    # --- reads (from the mirror: only committed updates) ------------------------------------------

    def clock(self, job: str = DEFAULT_JOB) -> int:
        """``job``'s clock: outcomes it has had applied (its training progress, the slow decay's time)."""
        with self._lock:
            return self._clocks.get(job, 0)

    def jobs(self) -> list[str]:
        """Every job with a posterior or a pool, sorted."""
        with self._lock:
            return sorted({job for job, _ in self._states} | {job for job, _ in self._pools})

    def get(self, prompt_id: str, job: str = DEFAULT_JOB) -> dict[str, Any] | None:
        with self._lock:
            state, clock = self._states.get((job, prompt_id)), self._clocks.get(job, 0)
        return None if state is None else view(state, clock, self.params, job)

    def pool(self, name: str, job: str = DEFAULT_JOB) -> list[str] | None:
        with self._lock:
            ids = self._pools.get((job, name))
        return None if ids is None else list(ids)

    def pools(self, job: str = DEFAULT_JOB) -> dict[str, int]:
        with self._lock:
            return {name: len(ids) for (owner, name), ids in self._pools.items() if owner == job}

    def sample(self, candidates: Sequence[str], k: int, seed: int | None = None, job: str = DEFAULT_JOB) -> list[str]:
        """``k`` distinct ids of ``candidates`` (deduplicated, order kept) by Thompson sampling on
        ``job``'s posteriors; a candidate the job never scored is drawn from the prior."""
        unique = list(dict.fromkeys(candidates))
        with self._lock:
            states = [self._states.get((job, pid)) for pid in unique]
            clock = self._clocks.get(job, 0)
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

    def sample_pool(self, name: str, k: int, seed: int | None = None, job: str = DEFAULT_JOB) -> list[str]:
        ids = self.pool(name, job)
        if ids is None:
            raise UnknownPool(f"pool {name!r} is not registered for job {job!r}")
        return self.sample(ids, k, seed, job)

    def export_rows(self, job: str = DEFAULT_JOB) -> Iterator[dict[str, Any]]:
        """Every prompt ``job`` tracks, sorted by id, values as of the job's clock."""
        with self._lock:
            states = [s for (owner, _), s in self._states.items() if owner == job]
            clock = self._clocks.get(job, 0)
        for state in sorted(states, key=lambda s: s.prompt_id):
            yield view(state, clock, self.params, job)

    def summary(self) -> dict[str, Any]:
        """For the metrics, over every job: prompts tracked, counts of estimated p per bucket,
        informative share."""
        with self._lock:
            states, clocks = list(self._states.items()), dict(self._clocks)
        return summarise_means(
            [posterior.mean(*posterior.at_clock(s, clocks.get(job, 0), self.params)) for (job, _), s in states]
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
