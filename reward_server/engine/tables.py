"""The embedding tables one service holds, by name (SPEC §15): several policies behind one service.

vLLM's ``OpenAIServingModels`` is the model: one registry owns everything tied to a table (its
tokenizer and rows, the robust profile's idf weights, the truth-token cache, all inside the
table's :class:`RewardEngine`), checks the ``model`` a request names, lists the tables, loads and
unloads them, and reloads one by name.

* The unnamed table (``--model-path``, else the embedded default) is ``default``; ``--table
  NAME=PATH`` adds others. A request without ``model`` uses ``default``.
* At most ``--max-resident-tables`` are in memory. A table loads on first use, off the event loop
  (a thread); the least recently used unpinned resident table is evicted to make room. ``--pin``
  keeps a table in memory: pinned tables load as the service starts (in the background) and are
  never evicted. A request for a table out of memory waits for its load, and its timing says how
  long.
* Tables are loaded one at a time: two loads of multi-GB checkpoints side by side would double the
  peak memory and gain nothing on one disk.
* One memory budget for the kernels, not one per table: the scoring worker runs one table's kernel
  at a time, each within ``memory_budget_mb``.

No HTTP here: the service renders :class:`UnknownModel` as a 422 listing the names.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from reward_server.embeddings.loader import load_table
from reward_server.embeddings.table import EmbeddingTable
from reward_server.engine.idf import IdfFileError, IdfTable, check_fits
from reward_server.engine.scorer import RewardEngine
from reward_server.errors import InvalidTable, UnknownModel, UsageError

log = logging.getLogger("reward_server.tables")

DEFAULT_TABLE = "default"


@dataclass
class TableEntry:
    """One named table: where it comes from, whether it is in memory, and what it cost."""

    name: str
    path: str | None  # a checkpoint directory; None: the embedded default
    pinned: bool = False
    engine: RewardEngine | None = None
    last_used: float = 0.0
    loads: int = 0
    load_seconds: float | None = None
    idf_applies: bool = False
    error: str | None = None
    loaded: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None  # the load in progress
    #: the table as it was when last in memory (``EmbeddingTable.info()``) and its size: kept after
    #: an eviction, so /v1/info still says what a load would bring back
    table_info: dict[str, Any] | None = None
    table_bytes: int | None = None
    ready_at: float | None = None  # time.perf_counter() when its last load finished

    @property
    def resident(self) -> bool:
        return self.engine is not None

    def install(self, engine: RewardEngine, idf_applies: bool, started: float | None) -> None:
        """Make ``engine`` this table's, as loaded now (``started``: when its load began; None for
        the table the service started with). Under the registry's lock."""
        self.engine, self.idf_applies, self.error = engine, idf_applies, None
        self.loads += 1
        self.ready_at = time.perf_counter()
        if started is not None:
            self.load_seconds = self.ready_at - started
        self.last_used = time.monotonic()
        table = engine.table
        self.table_info = table.info()
        self.table_bytes = int(table.weight.numel() * table.weight.element_size())

    def info(self) -> dict[str, Any]:
        """``/v1/info``'s entry: resident or not, source, hash, bytes, pinned, last load (an evicted
        table's facts are those it had when last in memory)."""
        out: dict[str, Any] = {
            "name": self.name, "resident": self.resident, "pinned": self.pinned,
            "path": self.path, "loads": self.loads, "load_seconds": self.load_seconds,
        }
        if self.table_info is not None:
            out.update(self.table_info, bytes=self.table_bytes,
                       token_weights="idf" if self.idf_applies else "uniform")
        if self.error:
            out["error"] = self.error
        return out


def parse_table_flags(values: list[str]) -> dict[str, str]:
    """``--table NAME=PATH`` values as {name: path}; a malformed or repeated one is a UsageError."""
    from reward_server.service.auth import JOB_NAME  # the same naming rule as jobs

    tables: dict[str, str] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not path or not JOB_NAME.match(name):
            raise UsageError(f"invalid setting table (--table / REWARD_TABLE) = {value!r}: expected NAME=PATH, "
                             "NAME of letters, digits, '_', '.', '-'")
        if name == DEFAULT_TABLE or name in tables:
            raise UsageError(f"--table {value}: the name {name!r} is already taken"
                             + (" (the unnamed table is 'default')" if name == DEFAULT_TABLE else ""))
        tables[name] = path
    return tables


class TableRegistry:
    """Named tables, their residency and their loads. Thread-safe where the scoring worker reads."""

    def __init__(
        self,
        default: RewardEngine,
        named: dict[str, str],
        *,
        default_path: str | None,
        max_resident: int,
        pinned: list[str] | tuple[str, ...] = (),
        build: Callable[[EmbeddingTable, IdfTable | None], RewardEngine],
        device: str | None = None,
        dtype: str | None = None,
        idf: IdfTable | None = None,
        idf_path: str | None = None,
    ) -> None:
        unknown = [name for name in pinned if name != DEFAULT_TABLE and name not in named]
        if unknown:
            raise UsageError(f"--pin {unknown[0]}: no such table (tables: {', '.join([DEFAULT_TABLE, *named])})")
        if len(set(pinned)) > max_resident:
            raise UsageError(f"--pin names {len(set(pinned))} tables ({', '.join(dict.fromkeys(pinned))}) but "
                             f"--max-resident-tables is {max_resident}: pinned tables are never evicted, so at "
                             "most that many can be pinned")
        self._build = build
        self.device, self.dtype = device, dtype
        self.idf, self.idf_path = idf, idf_path
        self.max_resident = max_resident
        self.entries: dict[str, TableEntry] = {
            DEFAULT_TABLE: TableEntry(DEFAULT_TABLE, default_path, DEFAULT_TABLE in pinned),
            **{name: TableEntry(name, path, name in pinned) for name, path in named.items()},
        }
        first = self.entries[DEFAULT_TABLE]
        first.install(default, default.idf is not None, started=None)
        first.loaded.set()
        self._load_lock = asyncio.Lock()
        self._lock = threading.Lock()  # residency, read by the scoring worker's thread
        self.on_loaded: Callable[[], None] | None = None  # the batcher's wake-up
        #: called with each engine that left memory (evicted or replaced): the batcher closes it on
        #: its device thread, after the batch that may still use it
        self.on_retired: Callable[[RewardEngine], None] | None = None

    # --- names --------------------------------------------------------------------------------

    def names(self) -> list[str]:
        return list(self.entries)

    def resolve(self, name: str | None) -> TableEntry:
        """The table a request names (None: the default); an unknown name raises UnknownModel."""
        if name is None:
            return self.entries[DEFAULT_TABLE]
        entry = self.entries.get(name) if isinstance(name, str) else None
        if entry is None:
            resident = [n for n, e in self.entries.items() if e.resident]
            loadable = [n for n, e in self.entries.items() if not e.resident]
            shown = name if isinstance(name, str) and len(name) <= 64 else str(name)[:61] + "..."
            raise UnknownModel.for_field("model", (
                f"unknown model {shown!r}; loaded: {', '.join(resident) or 'none'}"
                + (f"; loadable: {', '.join(loadable)}" if loadable else "")
            ))
        return entry

    # --- residency ----------------------------------------------------------------------------

    def engine(self, name: str) -> RewardEngine | None:
        """The resident engine of ``name`` (marked used now), or None: for the scoring worker."""
        with self._lock:
            entry = self.entries[name]
            if entry.engine is not None:
                entry.last_used = time.monotonic()
            return entry.engine

    def ensure_loading(self, name: str) -> None:
        """Start loading ``name`` in the background if it is not resident (idempotent)."""
        entry = self.entries[name]
        if entry.resident or entry.task is not None or any(e.task is not None for e in self.entries.values()):
            return  # resident, or a load runs: one at a time, its end wakes the batcher to ask again
        entry.loaded.clear()
        entry.task = asyncio.get_running_loop().create_task(self._load(entry))

    async def _load(self, entry: TableEntry) -> None:
        try:
            async with self._load_lock:
                if entry.engine is not None:
                    return
                started = time.perf_counter()
                try:
                    engine, idf_applies = await asyncio.to_thread(self._build_entry, entry.path, self.device, self.dtype)
                except (InvalidTable, ValueError, OSError, RuntimeError) as exc:
                    entry.error = str(exc)
                    log.error("table %s: cannot load %s: %s", entry.name, entry.path, exc)
                    return
                with self._lock:
                    entry.install(engine, idf_applies, started)
                    evicted = self._evict_beyond_limit(keep=entry.name)
                if evicted:
                    await asyncio.to_thread(_release_memory)
                log.info("table %s loaded in %.1fs%s", entry.name, entry.load_seconds,
                         f"; evicted {', '.join(evicted)}" if evicted else "")
        finally:
            entry.task = None
            entry.loaded.set()
            if self.on_loaded is not None:
                self.on_loaded()

    async def load_pinned(self) -> None:
        """Load every pinned table that is not in memory, one after another (started with the
        service, in the background): a table pinned because it is in steady use should not make
        its first request wait for the load."""
        for entry in self.entries.values():
            if entry.pinned and not entry.resident:
                if entry.task is None:
                    entry.loaded.clear()
                    entry.task = asyncio.get_running_loop().create_task(self._load(entry))
                await entry.loaded.wait()

    def _build_entry(self, path: str | None, device: str | None, dtype: str | None) -> tuple[RewardEngine, bool]:
        """Load a checkpoint's table and build its engine (a thread): the idf file applies when it was
        built with this table's tokenizer; another policy's table weighs every token 1."""
        table = load_table(path, device=device, dtype=dtype)
        idf = self.idf
        if idf is not None:
            try:
                check_fits(idf, self.idf_path or "", table.tokenizer, table.vocab_size)
            except IdfFileError:
                idf = None
        return self._build(table, idf), idf is not None

    def _evict_beyond_limit(self, keep: str) -> list[str]:
        """Drop the least recently used unpinned tables until at most ``max_resident`` stay (under
        the lock). A batch in flight keeps its own reference to its engine, so eviction is safe."""
        resident = [e for e in self.entries.values() if e.resident]
        evicted = []
        for entry in sorted(resident, key=lambda e: e.last_used):
            if len(resident) - len(evicted) <= self.max_resident:
                break
            if entry.pinned or entry.name == keep:
                continue
            self._retire(entry.engine)
            entry.engine = None
            evicted.append(entry.name)
        return evicted

    def _retire(self, engine: RewardEngine | None) -> None:
        if engine is not None and self.on_retired is not None:
            self.on_retired(engine)

    # --- reloads and listing ------------------------------------------------------------------

    async def reload(
        self, name: str, path: str | None, device: str | None, dtype: str | None,
    ) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        """Load ``path`` as table ``name`` (off the event loop) and swap it in: the batch in flight
        finishes on the old table, every later batch uses the new one, the old one is freed.
        Returns (the table it replaces, as when last in memory, or None if it never was; the new one)."""
        entry = self.resolve(name)
        async with self._load_lock:
            old = entry.table_info  # the one in memory, else as when it last was (None: never loaded)
            started = time.perf_counter()
            engine, idf_applies = await asyncio.to_thread(self._build_entry, path, device, dtype)
            with self._lock:
                self._retire(entry.engine)
                entry.path = path
                entry.install(engine, idf_applies, started)
                evicted = self._evict_beyond_limit(keep=entry.name)
            entry.loaded.set()
        await asyncio.to_thread(_release_memory)
        if evicted:
            log.info("reload of %s evicted %s", name, ", ".join(evicted))
        return old, engine.table.info()

    def default_engine(self) -> RewardEngine | None:
        return self.entries[DEFAULT_TABLE].engine

    def info(self) -> list[dict[str, Any]]:
        return [entry.info() for entry in self.entries.values()]


def _release_memory() -> None:
    """Give an evicted or replaced table's memory back (CPU: the allocator; CUDA: the cache)."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


__all__ = ["DEFAULT_TABLE", "TableEntry", "TableRegistry", "parse_table_flags"]
