"""The batched BMAS kernel equals the per-item definition (SPEC §6) within 1e-5 in float32.

Random tables include a zero row and rows whose cosines with the truth are all negative; budgets
go down to a few KB so that every chunking path (truth columns, response rows, pair slices,
sub-groups) runs; groups range from one response to many, empty responses included.
"""

from __future__ import annotations

import random

import pytest
import torch

from reward_server.engine.bmas import (
    GroupInput,
    bmas_reference,
    prepare_truth,
    score_group,
    truth_block,
    weighted_reference,
)

VOCAB, DIM = 300, 16


def _table(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(VOCAB, DIM, generator=gen)
    weight[7] = 0.0  # a zero row: cosine 0 with everything, itself included
    weight[11] = -weight[12]  # 11 is the exact opposite of 12
    weight = weight / weight.norm(dim=1, keepdim=True).clamp(min=1e-12)
    return weight, weight.norm(dim=1) > 0


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


def _run(weight, nonzero, truth, responses, budget, block_limit=0, state=None, token_weights=None):
    group = GroupInput(
        truth_ids=torch.tensor(truth, dtype=torch.int64),
        response_ids=torch.tensor([t for r in responses for t in r], dtype=torch.int64),
        response_lengths=torch.tensor([len(r) for r in responses], dtype=torch.int64),
        truth=state,
    )
    return score_group(
        weight, nonzero, group, budget_bytes=budget, block_limit_bytes=block_limit, token_weights=token_weights
    )


@pytest.mark.parametrize("budget", [256 << 20, 8 << 10, 1 << 10, 64])
@pytest.mark.parametrize("block", [False, True])
def test_batched_equals_per_item(budget: int, block: bool) -> None:
    weight, nonzero = _table()
    rng = random.Random(budget + block)
    for k in (1, 2, 5, 17):
        truth, responses = _group(rng, k, 40)
        forward, backward = _run(weight, nonzero, truth, responses, budget, 1 << 30 if block else 0)
        for i, response in enumerate(responses):
            f, b = bmas_reference(weight, response, truth)
            assert abs(forward[i].item() - f) <= 1e-5
            assert abs(backward[i].item() - b) <= 1e-5


def test_identical_texts_score_exactly_two() -> None:
    weight, nonzero = _table()
    truth = [5, 9, 9, 42, 100, 11, 12, 250]
    for block in (0, 1 << 30):
        forward, backward = _run(weight, nonzero, truth, [truth, list(reversed(truth))], 256 << 20, block)
        assert (forward + backward).tolist() == [2.0, 2.0]


def test_all_negative_row_keeps_its_true_max() -> None:
    weight, nonzero = _table()
    # Token 11 is the opposite of 12: its only cosine with the truth [12] is -1, which must survive
    # (a 0-padded max would say 0).
    forward, backward = _run(weight, nonzero, [12], [[11]], 256 << 20)
    assert forward.item() == pytest.approx(-1.0, abs=1e-6)
    assert backward.item() == pytest.approx(-1.0, abs=1e-6)


def test_score_does_not_depend_on_group_composition() -> None:
    weight, nonzero = _table()
    rng = random.Random(3)
    truth, responses = _group(rng, 12, 30)
    together_f, together_b = _run(weight, nonzero, truth, responses, 1 << 12)
    for i, response in enumerate(responses):
        alone_f, alone_b = _run(weight, nonzero, truth, [response], 256 << 20)
        assert abs(alone_f.item() - together_f[i].item()) <= 1e-6
        assert abs(alone_b.item() - together_b[i].item()) <= 1e-6


def test_cached_block_gives_the_same_scores() -> None:
    weight, nonzero = _table()
    rng = random.Random(4)
    truth, responses = _group(rng, 8, 50)
    state = prepare_truth(torch.tensor(truth))
    miss = _run(weight, nonzero, truth, responses, 256 << 20, 1 << 30, state)
    assert state.block is not None  # built on the miss, reused on the hit
    hit = _run(weight, nonzero, truth, responses, 256 << 20, 1 << 30, state)
    plain = _run(weight, nonzero, truth, responses, 256 << 20, 0)
    for a, b in zip(miss + hit, hit + plain):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)
    assert torch.equal(truth_block(weight, nonzero, state.uniq).diagonal()[state.uniq == 7], torch.zeros(1)) or (
        7 not in truth
    )


def test_long_texts_under_a_small_budget() -> None:
    """2,000-token responses against a 500-token truth with a 64 KB budget: chunked, same scores."""
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


# ------------------------------------------------------------ robust profile: weighted directions


def _token_weights(seed: int = 0) -> torch.Tensor:
    """idf-like weights: most tokens rare (high), a few very common (near the floor)."""
    gen = torch.Generator().manual_seed(seed)
    weights = torch.rand(VOCAB, generator=gen) * 8.0 + 0.5
    weights[:10] = 0.01
    return weights


@pytest.mark.parametrize("budget", [256 << 20, 8 << 10, 1 << 10, 64])
@pytest.mark.parametrize("block", [False, True])
def test_weighted_batched_equals_per_item(budget: int, block: bool) -> None:
    """SPEC §6: the robust kernel equals its per-item definition within 1e-5 on every path."""
    weight, nonzero = _table()
    weights = _token_weights()
    rng = random.Random(100 + budget + block)
    for k in (1, 2, 5, 17):
        truth, responses = _group(rng, k, 40)
        forward, backward = _run(weight, nonzero, truth, responses, budget, 1 << 30 if block else 0,
                                 token_weights=weights)
        for i, response in enumerate(responses):
            f, b = weighted_reference(weight, response, truth, weights)
            assert abs(forward[i].item() - f) <= 1e-5
            assert abs(backward[i].item() - b) <= 1e-5


def test_weighted_identical_texts_score_exactly_one_each_way() -> None:
    weight, nonzero = _table()
    weights = _token_weights()
    truth = [5, 9, 9, 42, 100, 11, 12, 250, 3]
    for budget, block in ((256 << 20, 0), (256 << 20, 1 << 30), (256, 0)):
        forward, backward = _run(weight, nonzero, truth, [truth, list(reversed(truth)), truth * 3], budget, block,
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
def _devices() -> list:
    cuda = pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
    )
    return ["cpu", cuda]


@pytest.mark.parametrize("device", _devices())
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_table_cached_equals_fresh(device: str, dtype: torch.dtype) -> None:
    """SPEC §6: with a bf16/fp16 table (the CUDA default), a score from the cached truth block, from
    a fresh matmul and from the float32 definition agree within 1e-5, so a reward never depends on
    what was scored before. On CPU this runs the same code path CUDA runs in bf16."""
    gen = torch.Generator().manual_seed(6)
    weight = torch.randn(VOCAB, 256, generator=gen)
    weight = (weight / weight.norm(dim=1, keepdim=True)).to(dtype).to(device)
    nonzero = weight.float().norm(dim=1) > 0
    rng = random.Random(6)
    truth, responses = _group(rng, 9, 60)
    state = prepare_truth(torch.tensor(truth, device=device))
    cold = _run(weight, nonzero, truth, responses, 256 << 20, 1 << 30, state)
    assert state.block is not None
    warm = _run(weight, nonzero, truth, responses, 256 << 20, 1 << 30, state)  # rows from the block
    fresh = _run(weight, nonzero, truth, responses, 256 << 20, 0)  # every row a fresh matmul
    chunked = _run(weight, nonzero, truth, responses, 4 << 10, 0)
    wide = weight.float()
    for i, response in enumerate(responses):
        if not response:
            continue
        # The definition in float32 over the same half-precision rows; a token's similarity with
        # itself is exactly 1 (the kernel's rule), though a rounded row's norm is only ~1 ± 1e-3.
        sim = wide[torch.tensor(response, device=device)] @ wide[torch.tensor(truth, device=device)].T
        sim[torch.tensor(response)[:, None] == torch.tensor(truth)[None, :]] = 1.0
        ref_f, ref_b = sim.amax(dim=1).mean().item(), sim.amax(dim=0).mean().item()
        for f, b in (cold, warm, fresh, chunked):
            assert abs(f[i].item() - ref_f) <= 1e-5
            assert abs(b[i].item() - ref_b) <= 1e-5
