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
from reward_server.engine.bmas import FLOAT_BYTES, GroupInput, TruthState, score_group
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


class RewardEngine:
    """Scores batches against one embedding table. Thread-safe: one batch at a time.

    On CPU the kernel runs on ``kernel_threads`` worker threads (default: torch's intra-op thread
    count), each with torch single-threaded, over disjoint sets of groups. The per-group tensors are
    small (a few hundred KB), too small for torch's intra-op parallelism to pay — on a busy machine
    its thread synchronisation costs more than the op — whereas whole groups split cleanly. On CUDA
    the kernel runs inline: the device is the parallelism.
    """

    def __init__(
        self,
        table: EmbeddingTable,
        *,
        memory_budget_bytes: int = 256 << 20,
        truth_cache_entries: int = 65536,
        truth_block_cache_bytes: int = 256 << 20,
        kernel_threads: int | None = None,
        idf: IdfTable | None = None,
    ) -> None:
        self.table = table
        self.idf = idf
        # The robust profile's token weights: idf from the user's file, else uniform.
        self.token_weights = (
            idf.weights(table.vocab_size, table.device)
            if idf is not None
            else torch.ones(table.vocab_size, dtype=torch.float32, device=table.device)
        )
        self.memory_budget_bytes = memory_budget_bytes
        self.truth_cache = TruthTokenCache(table, truth_cache_entries, truth_block_cache_bytes)
        self._nonzero_rows = ~table.zero_rows.to(table.device)
        self._lock = threading.Lock()
        threads = kernel_threads if kernel_threads is not None else torch.get_num_threads()
        self.kernel_threads = max(1, threads) if table.device.type == "cpu" else 1
        self._pool: ThreadPoolExecutor | None = None
        if self.kernel_threads > 1:
            self._pool = ThreadPoolExecutor(
                self.kernel_threads, thread_name_prefix="bmas-kernel", initializer=torch.set_num_threads,
                initargs=(1,),
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

    def prepare(
        self, items: Sequence[PreparedItem], indices: list[int]
    ) -> tuple[list[int], list[GroupInput], np.ndarray]:
        """Tokenize the answer spans of ``indices`` and group them by ground truth.

        Returns the item order the groups follow, the groups, and each item's token count. A group
        is one truth under one kind of open-ended reward (plain or weighted), so items of both
        profiles may share a batch; the truth's cached state is shared by both.
        """
        by_truth: dict[tuple[str, bool], list[int]] = {}
        for index in indices:
            item = items[index]
            key = (item.truth.text, PROFILES[item.options.profile].weighted)
            by_truth.setdefault(key, []).append(index)
        keys = list(by_truth)
        ordered = [index for key in keys for index in by_truth[key]]
        spans = [answer_span(items[index].response) for index in ordered]
        flat, lengths = encode_flat(self.table, spans)
        states = self.truth_cache.states([text for text, _ in keys], self.table.device)
        groups = self.groups_from_ids(
            flat, lengths, [len(by_truth[k]) for k in keys], states, [weighted for _, weighted in keys]
        )
        return ordered, groups, lengths

    def groups_from_ids(
        self,
        flat: np.ndarray,
        lengths: np.ndarray,
        sizes: Sequence[int],
        states: Sequence[TruthState],
        weighted: Sequence[bool] | None = None,
    ) -> list[GroupInput]:
        """Kernel inputs from token ids: ``flat``/``lengths`` hold the responses, group after group,
        ``sizes[g]`` responses scored against ``states[g]``, with the robust profile's weights when
        ``weighted[g]``. One host-to-device copy for all ids."""
        device = self.table.device
        flat_t = torch.from_numpy(flat).to(device, non_blocking=True)
        lengths_t = torch.from_numpy(lengths)
        ends = np.cumsum(lengths)
        groups = []
        id_offset = item_offset = 0
        flags = weighted if weighted is not None else [False] * len(sizes)
        for count, state, flag in zip(sizes, states, flags):
            stop = int(ends[item_offset + count - 1]) if count else id_offset
            groups.append(
                GroupInput(
                    truth_ids=state.uniq,  # the kernel reads ``truth``; kept for the dataclass
                    response_ids=flat_t[id_offset:stop],
                    response_lengths=lengths_t[item_offset : item_offset + count],
                    truth=state,
                    weighted=flag,
                )
            )
            id_offset = stop
            item_offset += count
        return groups

    def run_kernel(self, groups: list[GroupInput]) -> tuple[list[float], list[float]]:
        """Forward and backward terms of every response, in group order (one host copy in all)."""
        if not groups:
            return [], []
        budget = self.memory_budget_bytes // self.kernel_threads  # workers run side by side
        limits = self._block_limits(groups, budget)
        tasks = _split_for_workers(groups, limits, self.kernel_threads)

        def run(task: list[tuple[GroupInput, int]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
            return [
                score_group(
                    self.table.weight, self._nonzero_rows, g, budget_bytes=budget, block_limit_bytes=lim,
                    token_weights=self.token_weights if g.weighted else None,
                )
                for g, lim in task
            ]

        if self._pool is None or len(tasks) == 1:
            with _single_threaded_torch():
                parts = [run(task) for task in tasks]
        else:
            parts = list(self._pool.map(run, tasks))
        scored = [pair for part in parts for pair in part]
        forward = torch.cat([f for f, _ in scored]).cpu().tolist()
        backward = torch.cat([b for _, b in scored]).cpu().tolist()
        return forward, backward

    def _block_limits(self, groups: list[GroupInput], budget: int) -> list[int]:
        """Which truths may build their truth×truth block: it must fit a quarter of the kernel
        budget, and all new blocks together the cache's remaining byte allowance."""
        states = [g.truth for g in groups if g.truth is not None]
        allowance = self.truth_cache.block_allowance(states)
        limits = []
        for g in groups:
            need = int(g.truth.uniq.numel()) ** 2 * FLOAT_BYTES if g.truth is not None else 0
            if g.truth is not None and g.truth.block is None and need <= min(allowance, budget // 4):
                allowance -= need
                limits.append(need)
            else:
                limits.append(0)
        return limits

    def _bmas_terms(
        self, items: Sequence[PreparedItem], indices: list[int], report: BatchReport
    ) -> dict[int, tuple[float, float]]:
        """Tokenize, group by ground truth, run the kernel; returns item index -> (forward, backward)."""
        t0 = time.perf_counter()
        ordered, groups, lengths = self.prepare(items, indices)
        report.tokenize_seconds = time.perf_counter() - t0
        t1 = time.perf_counter()
        forward, backward = self.run_kernel(groups)
        report.kernel_seconds = time.perf_counter() - t1
        report.bmas_items = len(ordered)
        report.groups = len(groups)
        report.response_tokens = int(lengths.sum())
        report.truth_tokens = sum(g.truth.total for g in groups if g.truth is not None)
        return {index: (forward[i], backward[i]) for i, index in enumerate(ordered)}


@contextmanager
def _single_threaded_torch() -> Iterator[None]:
    """Torch intra-op threads = 1 on this thread for the block (thread-local with OpenMP, ~0.1 µs).

    The kernel's tensors are a few hundred KB per group: splitting each op over threads costs more
    in synchronisation than it saves, and on a machine whose cores are busy (tokenization, the event
    loop, other processes) it is several times slower. Whole groups go to worker threads instead.
    """
    previous = torch.get_num_threads()
    if previous == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _split_for_workers(
    groups: list[GroupInput], limits: list[int], workers: int
) -> list[list[tuple[GroupInput, int]]]:
    """Deal groups to ``workers`` task lists with about equal token counts, keeping group order
    within the concatenation of the lists (results are read back in that order).

    Contiguous runs, not round-robin, so the concatenated results stay in group order; a group
    bigger than its share is split on response boundaries (the kernel's result for a response does
    not depend on which other responses share its group).
    """
    pairs = list(zip(groups, limits))
    if workers <= 1:
        return [pairs]
    sizes = [int(g.response_ids.numel()) for g in groups]
    share = max(1, sum(sizes) // workers)
    pieces: list[tuple[GroupInput, int]] = []
    for (group, limit), size in zip(pairs, sizes):
        k = group.response_lengths.numel()
        if size <= share or k == 1:
            pieces.append((group, limit))
            continue
        lengths = group.response_lengths.tolist()
        start_item = start_token = 0
        while start_item < k:
            stop_item, tokens = start_item, 0
            while stop_item < k and (stop_item == start_item or tokens + lengths[stop_item] <= share):
                tokens += lengths[stop_item]
                stop_item += 1
            pieces.append(
                (
                    GroupInput(
                        truth_ids=group.truth_ids,
                        response_ids=group.response_ids[start_token : start_token + tokens],
                        response_lengths=group.response_lengths[start_item:stop_item],
                        truth=group.truth,
                        weighted=group.weighted,
                    ),
                    limit if start_item == 0 else 0,
                )
            )
            start_item, start_token = stop_item, start_token + tokens
    tasks: list[list[tuple[GroupInput, int]]] = [[]]
    filled = 0
    for piece in pieces:
        size = int(piece[0].response_ids.numel())
        if filled >= share and len(tasks) < workers:
            tasks.append([])
            filled = 0
        tasks[-1].append(piece)
        filled += size
    return [t for t in tasks if t]


def _finite(value: float) -> float:
    """Last line of defence for SPEC §8 ("every number returned is finite")."""
    if not math.isfinite(value):
        raise ArithmeticError(f"non-finite reward component {value!r}")
    return float(value)


__all__ = ["BatchReport", "ItemReward", "PreparedItem", "ResolvedOptions", "RewardEngine"]
