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
from reward_server.engine.bmas import FLOAT_BYTES, GroupInput, TruthState, score_group
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
        pool: ScorerPool | None = None,
    ) -> None:
        self.table = table
        self.pool = pool  # for pooled families (math) when this engine scores them itself (offline)
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
        """Route each item by where its family runs: inline rules here, pooled families (math) to
        the pool (blocking: the service sends those to the pool itself, never through a batch),
        open-ended items to the kernel; then combine with the format reward (SPEC §8)."""
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
        if pooled:
            if self.pool is None:
                raise RuntimeError("items of a pooled family reached an engine without a worker pool")
            for index, score in zip(pooled, self.pool.score_blocking([items[i] for i in pooled])):
                scores[index] = score
        if on_table:
            for index, (forward, backward) in self._bmas_terms(items, on_table, report).items():
                scores[index] = bmas_score(forward, backward, items[index].options)
            explained = [i for i in on_table if items[i].options.explain]
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
            rows = weight[distinct].float()
            best = (rows @ weight[torch.from_numpy(truth_ids).to(weight.device)].float().T).clamp_(-1, 1).amax(dim=1)
            best = torch.where(torch.isin(distinct, torch.from_numpy(truth_ids).to(weight.device)), 1.0, best)
            order = torch.argsort(best, stable=True)[:count].cpu().tolist()
            ids_list = distinct.cpu().tolist()
            token = self.table.tokenizer.id_to_token
            out.append([{"token": token(ids_list[i]), "similarity": float(best[i])} for i in order])
        return out

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


__all__ = ["BatchReport", "RewardEngine"]
