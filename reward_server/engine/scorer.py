"""The reward engine: a batch of (response, prepared ground truth, options) in, rewards out.

It routes each item to its rule (pure functions in ``reward_server.rewards``) or to the BMAS
kernel, groups open-ended items by ground truth so a GRPO group's truth is tokenized and embedded
once, and combines accuracy and format into the final reward (SPEC §8). It knows nothing of HTTP:
the service, the offline ``score`` command and the benchmarks all drive this same class.
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from reward_server.embeddings.table import EmbeddingTable
from reward_server.engine.bmas import BmasKernel, FlatBatch, TruthState
from reward_server.engine.idf import IdfTable
from reward_server.engine.tokenization import TruthTokenCache, encode_flat
from reward_server.rewards.combine import final_reward
from reward_server.rewards.format import format_reward
from reward_server.rewards.profiles import DEFAULT_PROFILE, PROFILES, f_measure
from reward_server.rewards.rules import PreparedTruth, rule_accuracy
from reward_server.rewards.spans import answer_span
from reward_server.rewards.tasks import TaskType

BmasReduction = Literal["sum", "mean"]


@dataclass(frozen=True)
class ResolvedOptions:
    """Per-request knobs (SPEC §6, §8); the server's settings supply the defaults."""

    format_weight: float = 1.0
    bmas_reduction: BmasReduction = "sum"
    profile: str = DEFAULT_PROFILE  # a key of rewards.profiles.PROFILES, validated by the caller


@dataclass(frozen=True)
class PreparedItem:
    response: str
    truth: PreparedTruth
    options: ResolvedOptions = ResolvedOptions()


@dataclass(frozen=True)
class ItemReward:
    """Every component, not only the sum (SPEC §8). BMAS terms are set for open-ended items only."""

    reward: float
    accuracy: float
    format: float
    bmas_forward: float | None = None
    bmas_backward: float | None = None


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


class DeviceError(RuntimeError):
    """The device failed while scoring (a CUDA error other than running out of memory).

    CUDA errors such as an illegal address or an ECC error are sticky: every later call on the
    same context fails too. The engine records the first one in :attr:`RewardEngine.device_error`
    and raises this, so that the service can mark itself not ready instead of failing each batch.
    """


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

    ``score(items)`` runs the rule-scored items, both stages and the final combination.

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
    ) -> None:
        self.table = table
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
        report = BatchReport(items=len(items))
        started = time.perf_counter()
        formats = [format_reward(item.response) for item in items]
        accuracy: list[float] = [0.0] * len(items)
        open_ended: list[int] = []
        for index, item in enumerate(items):
            task = item.truth.task
            report.task_counts[task.value] = report.task_counts.get(task.value, 0) + 1
            if task is TaskType.OPEN_ENDED:
                open_ended.append(index)
            else:  # rule-scored: no tokenization at all
                accuracy[index] = rule_accuracy(task, item.response, item.truth)
        report.rules_seconds = time.perf_counter() - started

        terms: dict[int, tuple[float, float]] = {}
        if open_ended:
            terms = self._bmas_terms(items, open_ended, report)

        results = []
        for index, item in enumerate(items):
            forward = backward = None
            term = terms.get(index)
            if term is not None:
                forward, backward = term
                if PROFILES[item.options.profile].weighted:  # robust: F-measure, same range as BMAS
                    total = 2.0 * f_measure(forward, backward)
                else:
                    total = forward + backward
                accuracy[index] = total if item.options.bmas_reduction == "sum" else total / 2.0
            reward = final_reward(accuracy[index], formats[index], item.options.format_weight)
            results.append(
                ItemReward(
                    reward=_finite(reward),
                    accuracy=_finite(accuracy[index]),
                    format=formats[index],
                    bmas_forward=forward,
                    bmas_backward=backward,
                )
            )
        return results, report

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

    def _bind_device(self) -> None:
        """Make the table's device current on this thread (a no-op off CUDA)."""
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)

    def _bmas_terms(
        self, items: Sequence[PreparedItem], indices: list[int], report: BatchReport
    ) -> dict[int, tuple[float, float]]:
        """Both stages over the open-ended items; returns item index -> (forward, backward)."""
        prepared = self.prepare_batch([items[index] for index in indices])
        report.tokenize_seconds = prepared.tokenize_seconds
        started = time.perf_counter()
        terms = self.run_batch(prepared)
        report.kernel_seconds = time.perf_counter() - started
        report.bmas_items = len(indices)
        report.groups = prepared.groups
        report.response_tokens = prepared.response_tokens
        report.truth_tokens = prepared.truth_tokens
        return {index: terms[i] for i, index in enumerate(indices)}


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


def _finite(value: float) -> float:
    """Last line of defence for SPEC §8 ("every number returned is finite")."""
    if not math.isfinite(value):
        raise ArithmeticError(f"non-finite reward component {value!r}")
    return float(value)


__all__ = [
    "BatchReport", "DeviceError", "ItemReward", "PreparedBatch", "PreparedItem", "ResolvedOptions", "RewardEngine",
]
