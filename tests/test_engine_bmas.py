"""The batched BMAS kernel equals the per-item definition (SPEC §6) within 1e-5 in float32.

Random tables include a zero row and rows whose cosines with the truth are all negative; budgets
go down to a few bytes so that every path of the flat kernel runs (multi-group chunks, a group
tiled by truth columns, rows and pairs, groups cut into single responses); batches hold one group
or many, plain and robust together, empty responses and empty truths included, split into one to
three slices (the CPU worker threads).

Every test pins its device: CPU float32 where a comparison against float32 at 1e-5 is meant; the
CUDA variants (skipped without a GPU) run the table in bf16 with a bf16-aware tolerance.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import pytest
import torch

from reward_server.engine.bmas import (
    BmasKernel,
    GroupInput,
    bmas_reference,
    prepare_truth,
    weighted_reference,
)


def score_groups(
    weight: torch.Tensor,
    nonzero_rows: torch.Tensor,
    groups: Sequence[GroupInput],
    *,
    budget_bytes: int = 256 << 20,
    chunk_bytes: int | None = None,
    token_weights: torch.Tensor | None = None,
    slices: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Forward and backward terms (float32) of every response of ``groups``, in order, from a
    kernel built for this call (the engine keeps one kernel per table)."""
    kernel = BmasKernel(weight, nonzero_rows, token_weights, budget_bytes=budget_bytes,
                        chunk_bytes=chunk_bytes, slices=slices)
    ids = np.concatenate([np.asarray(g.response_ids, dtype=np.int64) for g in groups]) if groups else np.zeros(0)
    lengths = (np.concatenate([np.asarray(g.response_lengths, dtype=np.int64) for g in groups])
               if groups else np.zeros(0, dtype=np.int64))
    batch = kernel.prepare(ids, lengths, [len(g.response_lengths) for g in groups], [g.truth for g in groups],
                           [g.weighted for g in groups])
    return kernel.run(batch)


VOCAB, DIM = 300, 16
BUDGETS = [256 << 20, 8 << 10, 1 << 10, 64]


def _devices() -> list:
    cuda = pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
    )
    return ["cpu", cuda]


def _table(seed: int = 0, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(VOCAB, DIM, generator=gen)
    weight[7] = 0.0  # a zero row: cosine 0 with everything, itself included
    weight[11] = -weight[12]  # 11 is the exact opposite of 12
    weight = weight / weight.norm(dim=1, keepdim=True).clamp(min=1e-12)
    return weight.to(device), (weight.norm(dim=1) > 0).to(device)


def _group(rng: random.Random, k: int, max_len: int) -> tuple[list[int], list[list[int]]]:
    truth = [rng.randrange(VOCAB) for _ in range(rng.randint(1, max_len))]
    responses = []
    for _ in range(k):
        kind = rng.random()
        if kind < 0.1:
            responses.append([])
        elif kind < 0.5:  # paraphrase-like: mostly truth tokens
            responses.append([rng.choice(truth) if rng.random() < 0.7 else rng.randrange(VOCAB)
                              for _ in range(rng.randint(1, max_len))])
        else:
            responses.append([rng.randrange(VOCAB) for _ in range(rng.randint(1, 2 * max_len))])
    return truth, responses


def _input(truth: list[int], responses: list[list[int]], weighted: bool = False) -> GroupInput:
    return GroupInput(
        truth=prepare_truth(np.asarray(truth, dtype=np.int64)),
        response_ids=np.asarray([t for r in responses for t in r], dtype=np.int64),
        response_lengths=np.asarray([len(r) for r in responses], dtype=np.int64),
        weighted=weighted,
    )


def _run(weight, nonzero, truth, responses, budget, token_weights=None, slices=1, chunk=None):
    """One group; (forward, backward) as float32 tensors."""
    forward, backward = score_groups(
        weight, nonzero, [_input(truth, responses, token_weights is not None)], budget_bytes=budget,
        chunk_bytes=chunk, token_weights=token_weights, slices=slices,
    )
    return torch.from_numpy(forward), torch.from_numpy(backward)


@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("slices", [1, 2])
def test_batched_equals_per_item(budget: int, slices: int) -> None:
    weight, nonzero = _table()
    rng = random.Random(budget + slices)
    for k in (1, 2, 5, 17):
        truth, responses = _group(rng, k, 40)
        forward, backward = _run(weight, nonzero, truth, responses, budget, slices=slices)
        for i, response in enumerate(responses):
            f, b = bmas_reference(weight, response, truth)
            assert abs(forward[i].item() - f) <= 1e-5
            assert abs(backward[i].item() - b) <= 1e-5


@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("slices", [1, 3])
def test_many_groups_in_one_batch_both_profiles(budget: int, slices: int) -> None:
    """The flat batch: several truths, plain and robust groups together, an empty truth and empty
    responses; every response equals its own per-item definition."""
    weight, nonzero = _table(2)
    weights = _token_weights(2)
    rng = random.Random(7 * budget + slices)
    groups, expected = [], []
    for g in range(7):
        truth, responses = _group(rng, rng.choice([1, 2, 5, 9]), 30)
        if g == 3:
            truth = []
        weighted = g % 2 == 1
        groups.append(_input(truth, responses, weighted))
        for response in responses:
            reference = weighted_reference(weight, response, truth, weights) if weighted else bmas_reference(
                weight, response, truth)
            expected.append(reference)
    forward, backward = score_groups(weight, nonzero, groups, budget_bytes=budget, token_weights=weights,
                                     slices=slices)
    for i, (f, b) in enumerate(expected):
        assert abs(forward[i] - f) <= 1e-5 and abs(backward[i] - b) <= 1e-5


def test_identical_texts_score_exactly_two() -> None:
    weight, nonzero = _table()
    truth = [5, 9, 9, 42, 100, 11, 12, 250]
    for budget in (256 << 20, 256):
        forward, backward = _run(weight, nonzero, truth, [truth, list(reversed(truth))], budget)
        assert (forward + backward).tolist() == [2.0, 2.0]


def test_all_negative_row_keeps_its_true_max() -> None:
    weight, nonzero = _table()
    # Token 11 is the opposite of 12: its only cosine with the truth [12] is -1, which must survive
    # (a 0-padded max would say 0).
    forward, backward = _run(weight, nonzero, [12], [[11]], 256 << 20)
    assert forward.item() == pytest.approx(-1.0, abs=1e-6)
    assert backward.item() == pytest.approx(-1.0, abs=1e-6)
    # Padded next to a wider truth in the same chunk, it still keeps -1 (padding repeats a real column).
    forward, backward = score_groups(weight, nonzero, [_input(list(range(20, 60)), [[20, 21]]), _input([12], [[11]])])
    assert forward[1] == pytest.approx(-1.0, abs=1e-6) and backward[1] == pytest.approx(-1.0, abs=1e-6)


def test_score_does_not_depend_on_group_composition() -> None:
    weight, nonzero = _table()
    rng = random.Random(3)
    truth, responses = _group(rng, 12, 30)
    together_f, together_b = _run(weight, nonzero, truth, responses, 1 << 12)
    for i, response in enumerate(responses):
        alone_f, alone_b = _run(weight, nonzero, truth, [response], 256 << 20)
        assert abs(alone_f.item() - together_f[i].item()) <= 1e-6
        assert abs(alone_b.item() - together_b[i].item()) <= 1e-6


def test_long_texts_under_a_small_budget() -> None:
    """2,000-token responses against a 500-token truth with a 64 KB budget: tiled, same scores."""
    weight, nonzero = _table(1)
    rng = random.Random(5)
    truth = [rng.randrange(VOCAB) for _ in range(500)]
    responses = [[rng.randrange(VOCAB) for _ in range(2000)] for _ in range(3)]
    forward, backward = _run(weight, nonzero, truth, responses, 64 << 10)
    for i, response in enumerate(responses):
        f, b = bmas_reference(weight, response, truth)
        assert abs(forward[i].item() - f) <= 1e-5 and abs(backward[i].item() - b) <= 1e-5


def test_empty_sides_score_zero() -> None:
    weight, nonzero = _table()
    forward, backward = _run(weight, nonzero, [1, 2], [[], [3]], 256 << 20)
    assert forward[0].item() == 0.0 and backward[0].item() == 0.0
    forward, backward = _run(weight, nonzero, [], [[3, 4]], 256 << 20)
    assert forward.tolist() == [0.0] and backward.tolist() == [0.0]
    forward, backward = score_groups(weight, nonzero, [])
    assert forward.size == 0 and backward.size == 0


@pytest.mark.parametrize("device", _devices())
def test_same_batch_same_bytes(device: str) -> None:
    """Deterministic reductions (a stable sort, sorted segment sums, no atomics): scoring the same
    batch twice gives identical bytes, on any device."""
    weight, nonzero = _table(4, device)
    weights = _token_weights(4).to(device)
    rng = random.Random(11)
    groups = [_input(*_group(rng, 8, 60), weighted=g % 3 == 0) for g in range(12)]
    kernel = BmasKernel(weight, nonzero, weights, budget_bytes=1 << 20)
    first = kernel.run(kernel.prepare(*_flat(groups)))
    second = kernel.run(kernel.prepare(*_flat(groups)))
    assert first[0].tobytes() == second[0].tobytes() and first[1].tobytes() == second[1].tobytes()


def _flat(groups: list[GroupInput]) -> tuple:
    return (np.concatenate([g.response_ids for g in groups]), np.concatenate([g.response_lengths for g in groups]),
            [g.response_lengths.size for g in groups], [g.truth for g in groups], [g.weighted for g in groups])


# ------------------------------------------------------------ robust profile: weighted directions


def _token_weights(seed: int = 0) -> torch.Tensor:
    """idf-like weights: most tokens rare (high), a few very common (near the floor)."""
    gen = torch.Generator().manual_seed(seed)
    weights = torch.rand(VOCAB, generator=gen) * 8.0 + 0.5
    weights[:10] = 0.01
    return weights


@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("slices", [1, 2])
def test_weighted_batched_equals_per_item(budget: int, slices: int) -> None:
    """SPEC §6: the robust kernel equals its per-item definition within 1e-5 on every path."""
    weight, nonzero = _table()
    weights = _token_weights()
    rng = random.Random(100 + budget + slices)
    for k in (1, 2, 5, 17):
        truth, responses = _group(rng, k, 40)
        forward, backward = _run(weight, nonzero, truth, responses, budget, token_weights=weights, slices=slices)
        for i, response in enumerate(responses):
            f, b = weighted_reference(weight, response, truth, weights)
            assert abs(forward[i].item() - f) <= 1e-5
            assert abs(backward[i].item() - b) <= 1e-5


def test_weighted_identical_texts_score_exactly_one_each_way() -> None:
    weight, nonzero = _table()
    weights = _token_weights()
    truth = [5, 9, 9, 42, 100, 11, 12, 250, 3]
    for budget in (256 << 20, 4 << 10, 256):
        forward, backward = _run(weight, nonzero, truth, [truth, list(reversed(truth)), truth * 3], budget,
                                 token_weights=weights)
        assert forward.tolist() == [1.0, 1.0, 1.0]
        assert backward.tolist() == [1.0, 1.0, 1.0]


def test_weighted_repetition_adds_nothing() -> None:
    """Distinct tokens count once: repeating the best-matching token cannot raise either direction."""
    weight, nonzero = _table()
    weights = _token_weights()
    truth = [20, 21, 22, 23]
    base = [20, 150, 151]
    padded = base + [20] * 50
    (f_base, f_pad), (b_base, b_pad) = (t.tolist() for t in _run(
        weight, nonzero, truth, [base, padded], 256 << 20, token_weights=weights))
    assert f_pad == pytest.approx(f_base, abs=1e-7) and b_pad == pytest.approx(b_base, abs=1e-7)
    # Under the paper's mean the same padding lifts the forward term towards 1.
    paper_f, _ = _run(weight, nonzero, truth, [base, padded], 256 << 20)
    assert paper_f[1].item() > paper_f[0].item() + 0.3


def test_weighted_common_tokens_earn_little_recall() -> None:
    """A response of only the truth's commonest tokens is perfect one way, poor the other."""
    weight, nonzero = _table()
    weights = _token_weights()
    truth = [1, 2, 30, 31, 32, 33]  # 1, 2: near-zero weight ("a", ".")
    forward, backward = _run(weight, nonzero, truth, [[1, 2]], 256 << 20, token_weights=weights)
    assert forward.item() == 1.0
    assert backward.item() < 0.5


def test_weighted_score_does_not_depend_on_group_composition() -> None:
    weight, nonzero = _table()
    weights = _token_weights(1)
    rng = random.Random(7)
    truth, responses = _group(rng, 12, 30)
    together_f, together_b = _run(weight, nonzero, truth, responses, 1 << 12, token_weights=weights)
    for i, response in enumerate(responses):
        alone_f, alone_b = _run(weight, nonzero, truth, [response], 256 << 20, token_weights=weights)
        assert abs(alone_f.item() - together_f[i].item()) <= 1e-6
        assert abs(alone_b.item() - together_b[i].item()) <= 1e-6


def test_weighted_empty_sides_score_zero() -> None:
    weight, nonzero = _table()
    weights = _token_weights()
    forward, backward = _run(weight, nonzero, [1, 2], [[], [3]], 256 << 20, token_weights=weights)
    assert forward[0].item() == 0.0 and backward[0].item() == 0.0
    forward, backward = _run(weight, nonzero, [], [[3, 4]], 256 << 20, token_weights=weights)
    assert forward.tolist() == [0.0] and backward.tolist() == [0.0]


# ------------------------------------------------------------ half-precision tables


@pytest.mark.parametrize("device", _devices())
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_table_equals_its_float32_definition(device: str, dtype: torch.dtype) -> None:
    """SPEC §6 with a bf16/fp16 table (the CUDA default): one chunk, small chunks and tiles all equal
    the float32 definition over the same half-precision rows, so a reward never depends on how a
    batch was cut. On CPU the rows are widened to float32 before the matmul (tolerance 1e-5); on
    CUDA the matmul reads half rows and accumulates in float32 (``out_dtype``): each product is
    exact, only the summation order of the tensor cores differs, hence a bf16-aware 1e-4."""
    tolerance = 1e-5 if device == "cpu" else 1e-4
    gen = torch.Generator().manual_seed(6)
    weight = torch.randn(VOCAB, 256, generator=gen)
    weight = (weight / weight.norm(dim=1, keepdim=True)).to(dtype).to(device)
    nonzero = weight.float().norm(dim=1) > 0
    rng = random.Random(6)
    truth, responses = _group(rng, 9, 60)
    runs = [_run(weight, nonzero, truth, responses, budget) for budget in (256 << 20, 32 << 10, 4 << 10)]
    wide = weight.float()
    for i, response in enumerate(responses):
        if not response:
            continue
        # The definition in float32 over the same half-precision rows; a token's similarity with
        # itself is exactly 1 (the kernel's rule), though a rounded row's norm is only ~1 ± 1e-3.
        r_ids, g_ids = torch.tensor(response, device=device), torch.tensor(truth, device=device)
        sim = wide[r_ids] @ wide[g_ids].T
        sim[r_ids[:, None] == g_ids[None, :]] = 1.0
        ref_f, ref_b = sim.amax(dim=1).mean().item(), sim.amax(dim=0).mean().item()
        for f, b in runs:
            assert abs(f[i].item() - ref_f) <= tolerance
            assert abs(b[i].item() - ref_b) <= tolerance
