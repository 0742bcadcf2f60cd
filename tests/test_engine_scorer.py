"""The engine end to end (texts in, scores out) against the per-item definition on the default table.

Checks what the kernel tests cannot: grouping by truth text, the answer-span/tokenization stage,
the truth cache (hits equal misses), worker threads, batch-composition independence, the two-stage
API the batcher pipelines, and what a CUDA error does to the engine.
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from reward_server.engine.bmas import bmas_reference
from reward_server.engine.scorer import DeviceError, RewardEngine
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
    first, _ = engine.score(items)  # truth-cache misses
    second, report = engine.score(items)  # hits
    assert report.bmas_items == len(items) and report.groups == len({i.truth.text for i in items})
    for item, a, b in zip(items, first, second):
        assert a.accuracy == pytest.approx(_reference(default_table, item), abs=1e-5)
        assert abs(a.accuracy - b.accuracy) <= 1e-6


@pytest.fixture(scope="module")
def cuda_table():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    from reward_server.embeddings.loader import load_table

    return load_table(None, device="cuda")  # bf16, the CUDA default


def _half_reference(table, item: PreparedItem) -> float:
    """The definition in float32 over the table's own (bf16) rows, a token against itself exactly 1
    (the kernel's rule: a rounded row's norm is only ~1 ± 1e-3)."""
    span = answer_span(item.response)
    r_ids = torch.tensor(table.encode([span])[0] if span else [], dtype=torch.int64, device=table.device)
    g_ids = torch.tensor(table.encode([item.truth.text])[0], dtype=torch.int64, device=table.device)
    if not len(r_ids) or not len(g_ids):
        return 0.0
    rows = table.weight.float()
    sim = rows[r_ids] @ rows[g_ids].T
    sim[(r_ids[:, None] == g_ids[None, :]) & (rows[r_ids].norm(dim=1) > 0)[:, None]] = 1.0
    return float(sim.amax(dim=1).mean() + sim.amax(dim=0).mean())


def test_cuda_engine_equals_per_item(cuda_table) -> None:
    """On the GPU (bf16 table, float32 matmul output): the definition over the same rows within a
    bf16-aware 1e-4 (tensor cores sum in another order), identical texts exactly 2, same bytes twice."""
    engine = RewardEngine(cuda_table)
    items = _items(21)
    first, _ = engine.score(items)
    second, _ = engine.score(items)
    for item, a, b in zip(items, first, second):
        assert a.accuracy == pytest.approx(_half_reference(cuda_table, item), abs=1e-4)
        assert a.accuracy == b.accuracy
    truth = prepare_ground_truth("open_ended", "A small red dog sits on the green grass.")
    (same,), _ = engine.score([PreparedItem("A small red dog sits on the green grass.", truth)])
    assert same.accuracy == 2.0


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


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_two_stages_overlap_and_equal_score(default_table, request, device: str) -> None:
    """The batcher's pipeline: batch N+1's host stage on another thread while batch N's device stage
    runs gives the scores of ``score``; terms come back in the order of the items given. On CUDA
    the host stage pins its buffer on another thread, which binds the table's device first."""
    table = default_table if device == "cpu" else request.getfixturevalue("cuda_table")
    engine = RewardEngine(table)
    first, second = _items(11), _items(12)
    expected = [r.bmas_forward + r.bmas_backward for r in engine.score(second)[0]]
    with ThreadPoolExecutor(1) as host:
        prepared = engine.prepare_batch(first)
        for _ in range(3):
            upcoming = host.submit(engine.prepare_batch, second)  # host stage of N+1 ...
            engine.run_batch(prepared)  # ... while the device stage of N runs
            prepared = upcoming.result()
    terms = engine.run_batch(prepared)
    assert [f + b for f, b in terms] == pytest.approx(expected, abs=1e-6)
    assert prepared.items == len(second) and prepared.groups == len({i.truth.text for i in second})


def test_huge_texts_in_a_small_budget(default_table) -> None:
    """A 200,000-character truth and response with a 1 MiB budget: tiled, bounded, still the definition
    (computed here over distinct tokens, weighted by counts: the full 60k x 60k matrix is 15 GB)."""
    rng = random.Random(13)

    def text() -> str:
        letters = "abcdefghijklmnopqrstuvwxyz"
        return " ".join("".join(rng.choices(letters, k=rng.randint(2, 7))) for _ in range(40_000))[:200_000]

    truth_text, response = text(), text()
    engine = RewardEngine(default_table, memory_budget_bytes=1 << 20)
    item = PreparedItem(response, prepare_ground_truth("open_ended", truth_text))
    (result,), _ = engine.score([item])
    r_ids, r_counts = torch.unique(torch.tensor(default_table.encode([response])[0]), return_counts=True)
    g_ids, g_counts = torch.unique(torch.tensor(default_table.encode([truth_text])[0]), return_counts=True)
    assert len(r_ids) > 1000 and len(g_ids) > 1000  # big enough to be tiled in 1 MiB
    sim = default_table.weight[r_ids] @ default_table.weight[g_ids].T
    sim[r_ids[:, None] == g_ids[None, :]] = 1.0
    forward = (sim.amax(dim=1).double() * r_counts).sum() / r_counts.sum()
    backward = (sim.amax(dim=0).double() * g_counts).sum() / g_counts.sum()
    assert result.accuracy == pytest.approx(float(forward + backward), abs=1e-5)


def test_a_cuda_error_marks_the_engine_failed(default_table, monkeypatch) -> None:
    """A sticky CUDA error is recorded and raised as DeviceError (the service then reports not
    ready); out-of-memory is not sticky and passes through; a bug in the code stays a bug."""
    engine = RewardEngine(default_table)
    prepared = engine.prepare_batch(_items(14))
    monkeypatch.setattr(engine, "device", torch.device("cuda"))
    monkeypatch.setattr(engine, "_bind_device", lambda: None)

    def fail(exc: BaseException):
        def run(*args, **kwargs):
            raise exc
        return run

    monkeypatch.setattr(engine.kernel, "run", fail(torch.OutOfMemoryError("CUDA out of memory")))
    with pytest.raises(torch.OutOfMemoryError):
        engine.run_batch(prepared)
    monkeypatch.setattr(engine.kernel, "run", fail(RuntimeError("index out of range")))
    with pytest.raises(RuntimeError, match="index out of range"):
        engine.run_batch(prepared)
    assert engine.device_error is None
    monkeypatch.setattr(engine.kernel, "run", fail(RuntimeError("CUDA error: an illegal memory access")))
    with pytest.raises(DeviceError):
        engine.run_batch(prepared)
    assert engine.device_error is not None
    monkeypatch.setattr(engine.kernel, "run", fail(AssertionError("never called again")))
    with pytest.raises(DeviceError):
        engine.run_batch(prepared)
