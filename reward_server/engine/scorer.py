"""The reward engine: a batch of (response, prepared ground truth, options) in, rewards out.

It routes each item to its rule (pure functions in ``reward_server.rewards``) or to the BMAS
kernel, groups open-ended items by ground truth so a GRPO group's truth is tokenized and embedded
once, and combines accuracy and format into the final reward (SPEC §8). It knows nothing of HTTP:
the service, the offline ``score`` command and the benchmarks all drive this same class.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from reward_server.embeddings.table import EmbeddingTable
from reward_server.engine.bmas import BmasKernel, FlatBatch, TruthState
from reward_server.engine.idf import IdfTable
from reward_server.engine.pool import ScorerPool
from reward_server.engine.tokenization import TruthTokenCache, encode_flat
from reward_server.rewards.families.open_ended import bmas_score
from reward_server.rewards.family import Runs, Score
from reward_server.rewards.profiles import PROFILES
from reward_server.rewards.rules import score_answer
from reward_server.rewards.scoring import ItemReward, PreparedItem, combine
from reward_server.rewards.spans import answer_span


@dataclass
class BatchReport:
    """What one engine call did, for metrics and per-request timings."""

    items: int = 0
    bmas_items: int = 0
    groups: int = 0
    response_tokens: int = 0
    truth_tokens: int = 0
    tokenize_seconds: float = 0.0
    kernel_seconds: float = 0.0
    rules_seconds: float = 0.0
    task_counts: dict[str, int] = field(default_factory=dict)

    def merge(self, other: BatchReport) -> None:
        """Add another part of the same device batch (one table's sub-batch) to this report."""
        for name in ("bmas_items", "groups", "response_tokens", "truth_tokens"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("tokenize_seconds", "kernel_seconds", "rules_seconds"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for task, count in other.task_counts.items():
            self.task_counts[task] = self.task_counts.get(task, 0) + count


class DeviceError(RuntimeError):
    """The device failed while scoring (a CUDA error other than running out of memory).

    CUDA errors such as an illegal address or an ECC error are sticky: every later call on the
    same context fails too. The engine records the first one in :attr:`RewardEngine.device_error`
    and raises this, so that the service can mark itself not ready instead of failing each batch.
    """


@dataclass
class ScoringPass:
    """A batch between :meth:`RewardEngine.begin` (host) and :meth:`RewardEngine.finish` (device)."""

    items: Sequence[PreparedItem]
    scores: list[Score | None]
    on_table: list[int]
    prepared: PreparedBatch | None
    report: BatchReport


@dataclass
class PreparedBatch:
    """The host stage's output (:meth:`RewardEngine.prepare_batch`): everything the device needs.

    ``kernel`` holds the responses' token ids, the truths' columns and the flat per-batch arrays,
    packed in one buffer per slice (pinned on CUDA); ``order`` maps each response the kernel sees
    to the index of its item in the list given to ``prepare_batch``.
    """

    items: int
    order: list[int]
    kernel: FlatBatch
    groups: int = 0
    response_tokens: int = 0
    truth_tokens: int = 0
    tokenize_seconds: float = 0.0


class RewardEngine:
    """Scores batches against one embedding table. Thread-safe.

    Two stages, so that a caller can overlap them (tokenize batch N+1 while the device scores N):

    * ``prepare_batch(items) -> PreparedBatch`` (host stage): answer spans tokenized in one call,
      ground truths' states from the cache, every array the device needs packed into one buffer
      (pinned on CUDA). Touches no device state: safe on another thread while ``run_batch`` runs.
      Every item is scored by BMAS (the caller routes: open-ended items only); items of the robust
      profile (``options.profile``) get its weighted directions.
    * ``run_batch(prepared) -> list[(forward, backward)]`` (device stage): the flat kernel
      (``engine/bmas.py``), one batch at a time (a lock), results in the order of the items.
      A CUDA error other than out-of-memory is recorded in ``device_error`` and raised as
      :class:`DeviceError`: the device is unusable from then on, the caller should stop sending.

    ``score(items)`` routes each item by where its family runs (inline rules here, pooled ones to
    ``pool``, open-ended ones through both stages) and combines them with the format reward.

    On CPU a batch is split into ``kernel_threads`` flat computations (default: torch's intra-op
    thread count) run side by side on worker threads with torch single-threaded: the kernel's ops
    are too small for intra-op threading to pay on a busy machine, whole slices of the batch split
    cleanly. On CUDA there is one flat computation per batch and no worker thread; every thread
    that calls into the engine binds the table's device first (``torch.cuda.set_device``).
    """

    def __init__(
        self,
        table: EmbeddingTable,
        *,
        memory_budget_bytes: int = 256 << 20,
        truth_cache_entries: int = 65536,
        kernel_threads: int | None = None,
        chunk_bytes: int | None = None,
        idf: IdfTable | None = None,
        pool: ScorerPool | None = None,
    ) -> None:
        self.table = table
        self.pool = pool  # for pooled families (math) when this engine scores them itself (offline)
        self.idf = idf
        self.device = table.device
        # The robust profile's token weights: idf from the user's file, else uniform.
        self.token_weights = (
            idf.weights(table.vocab_size, table.device)
            if idf is not None
            else torch.ones(table.vocab_size, dtype=torch.float32, device=table.device)
        )
        self.memory_budget_bytes = memory_budget_bytes
        self.truth_cache = TruthTokenCache(table, truth_cache_entries)
        threads = kernel_threads if kernel_threads is not None else torch.get_num_threads()
        self.kernel_threads = max(1, threads) if table.device.type == "cpu" else 1
        self.kernel = BmasKernel(
            table.weight, ~table.zero_rows.to(table.device), self.token_weights,
            budget_bytes=memory_budget_bytes, chunk_bytes=chunk_bytes, slices=self.kernel_threads,
        )
        self.device_error: BaseException | None = None
        self._lock = threading.Lock()
        self._device_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        if self.kernel_threads > 1:
            self._pool = ThreadPoolExecutor(
                self.kernel_threads, thread_name_prefix="bmas-kernel", initializer=_worker_init,
                initargs=(table.device,),
            )
            weakref.finalize(self, self._pool.shutdown, wait=False)

    def score(self, items: Sequence[PreparedItem]) -> tuple[list[ItemReward], BatchReport]:
        with self._lock:
            return self._score(items)

    def _score(self, items: Sequence[PreparedItem]) -> tuple[list[ItemReward], BatchReport]:
        return self.finish(self.begin(items))

    def begin(self, items: Sequence[PreparedItem]) -> ScoringPass:
        """Host stage of :meth:`score`: route each item by where its family runs (inline rules
        scored here, pooled families (math) sent to the pool and awaited, open-ended items tokenized
        for the kernel). Safe on another thread while :meth:`finish` runs a previous pass."""
        report = BatchReport(items=len(items))
        started = time.perf_counter()
        scores: list[Score | None] = [None] * len(items)
        on_table: list[int] = []
        pooled: list[int] = []
        for index, item in enumerate(items):
            family = item.truth.family
            report.task_counts[family.name] = report.task_counts.get(family.name, 0) + 1
            if family.runs is Runs.TABLE:
                on_table.append(index)
            elif family.runs is Runs.POOL:
                pooled.append(index)
            else:  # rule-scored: no tokenization at all
                scores[index] = score_answer(item.response, item.truth, item.options)
        report.rules_seconds = time.perf_counter() - started
        if pooled:  # the service sends pooled items to the pool itself, never through a batch
            if self.pool is None:
                raise RuntimeError("items of a pooled family reached an engine without a worker pool")
            for index, score in zip(pooled, self.pool.score_blocking([items[i] for i in pooled])):
                scores[index] = score
        prepared = None
        if on_table:
            prepared = self.prepare_batch([items[index] for index in on_table])
            report.tokenize_seconds = prepared.tokenize_seconds
        return ScoringPass(items, scores, on_table, prepared, report)

    def finish(self, scoring: ScoringPass) -> tuple[list[ItemReward], BatchReport]:
        """Device stage of :meth:`score`: the kernel for the open-ended items, the explanations
        asked for, and the final combination with the format reward (SPEC §8)."""
        items, scores, report = scoring.items, scoring.scores, scoring.report
        if scoring.prepared is not None:
            started = time.perf_counter()
            terms = self.run_batch(scoring.prepared)
            report.kernel_seconds = time.perf_counter() - started
            report.bmas_items = len(scoring.on_table)
            report.groups = scoring.prepared.groups
            report.response_tokens = scoring.prepared.response_tokens
            report.truth_tokens = scoring.prepared.truth_tokens
            for index, (forward, backward) in zip(scoring.on_table, terms):
                scores[index] = bmas_score(forward, backward, items[index].options)
            explained = [i for i in scoring.on_table if items[i].options.explain]
            if explained:
                for index, tokens in zip(explained, self.weakest_tokens([items[i] for i in explained])):
                    scores[index] = replace(scores[index], parsed=tokens)  # type: ignore[arg-type]
        return [combine(item, score) for item, score in zip(items, scores) if score is not None], report

    def weakest_tokens(self, items: Sequence[PreparedItem], count: int = 5) -> list[list[dict[str, Any]]]:
        """For ``options.explain`` on open-ended items: the ``count`` distinct response tokens whose
        best match in the truth is weakest, weakest first, with that cosine. Computed one item at
        a time on the side (explanations are off by default); the rewards come from the kernel."""
        spans = [answer_span(item.response) for item in items]
        truths = self.truth_cache.get_many([item.truth.text for item in items])
        flat, lengths = encode_flat(self.table, spans)
        weight = self.table.weight
        out: list[list[dict[str, Any]]] = []
        for ids, truth_ids in zip(np.split(flat, np.cumsum(lengths)[:-1]), truths):
            if ids.size == 0 or truth_ids.size == 0:
                out.append([])
                continue
            distinct = torch.from_numpy(np.unique(ids)).to(weight.device)
            truth = torch.from_numpy(truth_ids).to(weight.device)
            best = (weight[distinct].float() @ weight[truth].float().T).clamp_(-1, 1).amax(dim=1)
            best = torch.where(torch.isin(distinct, truth), 1.0, best)  # a token against itself
            order = torch.argsort(best, stable=True)[:count].cpu().tolist()
            ids_list = distinct.cpu().tolist()
            token = self.table.tokenizer.id_to_token
            out.append([{"token": token(ids_list[i]), "similarity": float(best[i])} for i in order])
        return out

    def prepare_batch(self, items: Sequence[PreparedItem]) -> PreparedBatch:
        """Host stage: tokenize the answer spans, group by ground truth, pack the kernel's inputs.

        A group is one truth under one kind of open-ended reward (plain or weighted), so items of
        both profiles may share a batch; the truth's cached state is shared by both.
        """
        started = time.perf_counter()
        self._bind_device()
        by_truth: dict[tuple[str, bool], list[int]] = {}
        for index, item in enumerate(items):
            key = (item.truth.text, PROFILES[item.options.profile].weighted)
            by_truth.setdefault(key, []).append(index)
        keys = list(by_truth)
        order = [index for key in keys for index in by_truth[key]]
        flat, lengths = encode_flat(self.table, [answer_span(items[index].response) for index in order])
        states = self.truth_cache.states([text for text, _ in keys])
        prepared = self.prepare_ids(flat, lengths, [len(by_truth[k]) for k in keys], states,
                                    [weighted for _, weighted in keys])
        prepared.order = order
        prepared.items = len(items)
        prepared.tokenize_seconds = time.perf_counter() - started
        return prepared

    def prepare_ids(
        self,
        flat: np.ndarray,
        lengths: np.ndarray,
        sizes: Sequence[int],
        states: Sequence[TruthState],
        weighted: Sequence[bool] | None = None,
    ) -> PreparedBatch:
        """Host stage from token ids: ``flat``/``lengths`` hold the responses group after group,
        ``sizes[g]`` of them scored against ``states[g]``, with the robust profile's weights when
        ``weighted[g]``. Results come back in the order of ``lengths``."""
        self._bind_device()
        kernel = self.kernel.prepare(flat, lengths, sizes, states, weighted)
        return PreparedBatch(
            items=len(lengths), order=list(range(len(lengths))), kernel=kernel, groups=len(sizes),
            response_tokens=int(np.asarray(lengths).sum()), truth_tokens=sum(s.total for s in states),
        )

    def run_batch(self, prepared: PreparedBatch) -> list[tuple[float, float]]:
        """Device stage: (forward, backward) of every item given to ``prepare_batch``, in order."""
        if self.device_error is not None:
            raise DeviceError(f"the device failed earlier: {self.device_error}") from self.device_error
        with self._device_lock:
            self._bind_device()
            try:
                if self._pool is not None and len(prepared.kernel.slices) > 1:
                    forward, backward = self.kernel.run(prepared.kernel, self._pool.map)
                else:
                    with _single_threaded_torch(self.device):
                        forward, backward = self.kernel.run(prepared.kernel)
            except torch.OutOfMemoryError:
                raise  # not sticky: the next batch may fit
            except RuntimeError as exc:
                if self.device.type == "cuda" and _is_device_error(exc):
                    self.device_error = exc
                    raise DeviceError(f"CUDA error while scoring: {exc}") from exc
                raise
        terms: list[tuple[float, float]] = [(0.0, 0.0)] * prepared.items
        for position, index in enumerate(prepared.order):
            terms[index] = (float(forward[position]), float(backward[position]))
        return terms

    def close(self) -> None:
        """Let the table go (a reload swaps engines): stop the worker threads and drop every
        reference this engine holds to device memory. The engine cannot score afterwards."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        with self._device_lock:
            self.kernel = None  # type: ignore[assignment]
            self.token_weights = None  # type: ignore[assignment]

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` let the table go (an evicted or replaced table)."""
        return self.kernel is None

    def _bind_device(self) -> None:
        """Make the table's device current on this thread (a no-op off CUDA)."""
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)


def _worker_init(device: torch.device) -> None:
    """Kernel worker threads: torch single-threaded (the slices are the parallelism), and the
    table's device current when it is a GPU."""
    torch.set_num_threads(1)
    if device.type == "cuda":
        torch.cuda.set_device(device)


def _is_device_error(exc: BaseException) -> bool:
    """A CUDA runtime/driver error (the context is then unusable), as opposed to a bug."""
    if isinstance(exc, torch.AcceleratorError):
        return True
    text = str(exc)
    return "CUDA error" in text or "CUBLAS_STATUS" in text or "cuDNN error" in text


@contextmanager
def _single_threaded_torch(device: torch.device) -> Iterator[None]:
    """Torch intra-op threads = 1 on this thread for the block (thread-local with OpenMP, ~0.1 µs).

    The kernel's chunks are cache-sized: splitting each op over threads costs more in
    synchronisation than it saves, and on a machine whose cores are busy (tokenization, the event
    loop, other processes) it is several times slower. Slices go to worker threads instead.
    """
    previous = torch.get_num_threads()
    if previous == 1 or device.type != "cpu":
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


__all__ = ["BatchReport", "DeviceError", "PreparedBatch", "RewardEngine", "ScoringPass"]
