"""The engine end to end (texts in, scores out) against the per-item definition on the default table.

Checks what the kernel tests cannot: grouping by truth text, the answer-span/tokenization stage,
the truth cache (hits equal misses), worker threads, and batch-composition independence.
"""

from __future__ import annotations

import random

import pytest

from reward_server.engine.bmas import bmas_reference
from reward_server.engine.scorer import RewardEngine
from reward_server.rewards.options import ResolvedOptions
from reward_server.rewards.rules import prepare_ground_truth
from reward_server.rewards.scoring import PreparedItem
from reward_server.rewards.spans import answer_span

_WORDS = ["a", "red", "dog", "sits", "on", "the", "green", "grass", "near", "two", "small", "cats", "under", "blue", "sky", "while", "children", "play"]


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(n))


def _items(seed: int, groups: int = 6) -> list[PreparedItem]:
    rng = random.Random(seed)
    items = []
    for _ in range(groups):
        truth = prepare_ground_truth("open_ended", _text(rng, rng.randint(1, 60)))
        for _ in range(rng.randint(1, 9)):
            response = _text(rng, rng.randint(0, 80))
            if rng.random() < 0.3:
                response = f"<think>{_text(rng, 5)}</think><answer>{response}</answer>"
            items.append(PreparedItem(response, truth))
    rng.shuffle(items)
    return items


def _reference(table, item: PreparedItem) -> float:
    span = answer_span(item.response)
    ids = table.encode([span])[0] if span else []
    f, b = bmas_reference(table.weight, ids, table.encode([item.truth.text])[0])
    return f + b


@pytest.mark.parametrize("threads,budget", [(1, 256 << 20), (2, 4 << 10)])
def test_engine_equals_per_item(default_table, threads: int, budget: int) -> None:
    engine = RewardEngine(default_table, memory_budget_bytes=budget, kernel_threads=threads)
    items = _items(threads)
    first, _ = engine.score(items)  # truth-cache misses (blocks built)
    second, report = engine.score(items)  # hits
    assert report.bmas_items == len(items) and report.groups == len({i.truth.text for i in items})
    for item, a, b in zip(items, first, second):
        assert a.accuracy == pytest.approx(_reference(default_table, item), abs=1e-5)
        assert abs(a.accuracy - b.accuracy) <= 1e-6


def test_identical_texts(default_table) -> None:
    engine = RewardEngine(default_table)
    truth = prepare_ground_truth("open_ended", "A small red dog sits on the green grass.")
    items = [
        PreparedItem("A small red dog sits on the green grass.", truth),
        PreparedItem("<answer>A small red dog sits on the green grass.</answer>", truth, ResolvedOptions(bmas_reduction="mean")),
    ]
    for _ in range(2):  # miss, then hit
        results, _ = engine.score(items)
        assert results[0].accuracy == 2.0
        assert results[1].accuracy == 1.0


def test_score_does_not_depend_on_batch(default_table) -> None:
    engine = RewardEngine(default_table, truth_cache_entries=0)
    items = _items(7)
    together, _ = engine.score(items)
    for item, expected in zip(items[:10], together):
        alone, _ = engine.score([item])
        assert abs(alone[0].accuracy - expected.accuracy) <= 1e-6


def test_block_cache_stays_within_its_bound(default_table) -> None:
    engine = RewardEngine(default_table, truth_block_cache_bytes=20_000)
    engine.score(_items(9, groups=12))
    assert engine.truth_cache.block_bytes <= 20_000
