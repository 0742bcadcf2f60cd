"""The BMAS kernel (SPEC §6): Bidirectional Max-Average Similarity over input-embedding rows.

    BMAS = (1/N) Σ_i max_j S_ij  +  (1/M) Σ_j max_i S_ij,     S = R Gᵀ (cosines)

The table is static, so a cosine depends only on the two token *ids*. That gives the kernel its
shape: for one ground truth (a GRPO group shares one) we compute similarities only between the
*distinct* tokens of all its responses and the *distinct* tokens of the truth, once, and map them
back to every response by occurrence counts:

* forward term  ``max_j S_ij`` depends only on response token i's id, so it is a row max of the
  distinct-token matrix, weighted by how often each id occurs in each response;
* backward term ``max_i S_ij`` depends on which ids response k contains, so it is a segment max
  (``scatter_reduce(amax)``) over the rows of the ids each response contains, weighted by how often
  each truth id occurs in the truth.

Responses mostly reuse the truth's own words, so a truth also carries (cached, see
:class:`TruthState`) its truth×truth block ``G Gᵀ``: the row of a response token that occurs in
the truth is a row of that block, and only the *novel* response tokens need a matmul.

Memory is bounded by ``budget_bytes`` whatever the text lengths or the batch size: responses of a
group are split into sub-groups of bounded token count, truth columns and response rows are
processed in chunks, and the float buffers of one chunk are sized from the budget. Nothing is ever
padded, so there is nothing to mask: a max only ever sees real cosines (the property the spec's
"-inf padding" rule protects; the running maxima start at -inf, never 0).

This module is torch only: no HTTP, no tokenizer, device-agnostic (CPU float32, CUDA bf16: the
table is stored in its dtype, gathered rows are widened so matmuls and reductions run in float32). No per-item Python loop, no
``.item()``/``.tolist()`` per item.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

FLOAT_BYTES = 4


@dataclass(frozen=True)
class GroupInput:
    """One ground truth and the responses scored against it.

    ``response_ids`` is the concatenation of every response's token ids and ``response_lengths``
    their lengths, so a group travels as two flat tensors instead of K small ones.
    """

    truth_ids: torch.Tensor  # (M,) int64
    response_ids: torch.Tensor  # (sum N_k,) int64
    response_lengths: torch.Tensor  # (K,) int64
    truth: TruthState | None = None  # prepared truth (cached across batches); built if absent
    weighted: bool = False  # the robust profile: the caller passes its token weights


@dataclass
class TruthState:
    """What the kernel needs of one ground truth, computed once and reused across batches.

    ``block`` (m'×m', float32, clamped, exact 1.0 on the diagonal for non-zero rows) is filled
    lazily by the kernel when it fits ``block_limit_bytes``; ``block_bytes`` is what it costs.
    """

    uniq: torch.Tensor  # (m',) sorted distinct truth ids
    counts: torch.Tensor  # (m',) float32 occurrences of each
    total: int  # M, the truth's length in tokens
    block: torch.Tensor | None = field(default=None, repr=False)

    @property
    def block_bytes(self) -> int:
        return 0 if self.block is None else self.block.numel() * self.block.element_size()


def prepare_truth(truth_ids: torch.Tensor) -> TruthState:
    """Distinct ids and counts of a truth (no block yet)."""
    uniq, counts = torch.unique(truth_ids, return_counts=True)
    return TruthState(uniq=uniq, counts=counts.float(), total=int(truth_ids.numel()))


def bmas_reference(weight: torch.Tensor, response_ids: list[int], truth_ids: list[int]) -> tuple[float, float]:
    """The definition, one pair at a time: the yardstick the batched kernel must equal (1e-5).

    Returns the two directional averages (forward: response→truth, backward: truth→response);
    BMAS with the paper's ``sum`` reduction is their sum. ``weight`` rows must already be unit-norm.
    """
    if not response_ids or not truth_ids:
        return 0.0, 0.0
    r = weight[torch.as_tensor(response_ids, device=weight.device)].float()
    g = weight[torch.as_tensor(truth_ids, device=weight.device)].float()
    sim = r @ g.T
    return float(sim.amax(dim=1).mean()), float(sim.amax(dim=0).mean())


def weighted_reference(
    weight: torch.Tensor, response_ids: list[int], truth_ids: list[int], token_weights: torch.Tensor
) -> tuple[float, float]:
    """The robust profile's directions, one pair at a time: the yardstick for ``token_weights``.

    Each side is the set of its *distinct* tokens; a direction is the ``token_weights``-weighted
    mean, over one side's distinct tokens, of the best cosine with the other side's tokens.
    """
    if not response_ids or not truth_ids:
        return 0.0, 0.0
    r_ids = torch.as_tensor(sorted(set(response_ids)), device=weight.device)
    g_ids = torch.as_tensor(sorted(set(truth_ids)), device=weight.device)
    r = weight[r_ids].double()
    sim = (r @ weight[g_ids].double().T).clamp(-1.0, 1.0)
    same = (r_ids[:, None] == g_ids[None, :]) & (r.norm(dim=1) > 0)[:, None]
    sim = torch.where(same, torch.ones_like(sim), sim)  # a (non-zero) token's cosine with itself is 1
    wr, wg = token_weights[r_ids].double(), token_weights[g_ids].double()
    forward = (wr * sim.amax(dim=1)).sum() / wr.sum()
    backward = (wg * sim.amax(dim=0)).sum() / wg.sum()
    return float(forward), float(backward)


@dataclass(frozen=True)
class _Plan:
    """Chunk sizes derived from the byte budget for one truth (see module docstring)."""

    cols: int  # truth columns per chunk
    tokens: int  # response tokens per sub-group
    rows: int  # distinct response rows per chunk


def _plan(distinct_truth: int, dim: int, budget_bytes: int) -> _Plan:
    """Split ``budget_bytes`` as: truth rows ≤ 1/4, per-response column maxima ≤ 1/4, a row chunk
    (its similarities, their gathered copy and its embedding rows) ≤ 1/2."""
    quarter = max(1, budget_bytes // 4)
    cols = max(1, min(distinct_truth, quarter // (FLOAT_BYTES * dim)))
    tokens = max(1, quarter // (FLOAT_BYTES * cols))  # K ≤ tokens, so K×cols floats ≤ 1/4
    rows = max(1, (budget_bytes // 2) // (FLOAT_BYTES * (2 * cols + dim)))
    return _Plan(cols=cols, tokens=tokens, rows=rows)


def _similarity(weight: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Cosines of two unit-row sets, computed in float32 and clamped to [-1, 1].

    The gathered rows are widened to float32 *before* the matmul: a bf16/fp16 matmul rounds its
    output to ~3 significant digits, and since the cached truth block and a fresh matmul for novel
    rows have different shapes, the same cosine could come out ~4e-3 apart depending on what was
    scored before (SPEC §6 allows 1e-5). Widened, each product of two half-precision values is
    exact in float32 (and in TF32, whose 11-bit mantissa holds them), so only float32 accumulation
    order remains (~1e-7). The copy is of gathered rows only, sized by the plan's float32 budget.
    """
    return (weight[rows].float() @ weight[cols].float().T).clamp_(-1.0, 1.0)


def truth_block(weight: torch.Tensor, nonzero_rows: torch.Tensor, uniq: torch.Tensor) -> torch.Tensor:
    """G Gᵀ over a truth's distinct ids, exact 1.0 on the diagonal for non-zero rows.

    The diagonal is a token's similarity with itself: 1 by the maths, 0.9999999 by float rounding;
    writing the exact value is what makes identical texts score exactly 2.0.
    """
    block = _similarity(weight, uniq, uniq)
    diag = torch.where(nonzero_rows[uniq], 1.0, block.diagonal())
    block.diagonal().copy_(diag)
    return block


def _set_self_similarity(
    sim: torch.Tensor, row_ids: torch.Tensor, col_ids: torch.Tensor, nonzero_rows: torch.Tensor
) -> None:
    """Write an exact 1.0 where a row's id equals a column's id (``col_ids`` sorted)."""
    pos = torch.searchsorted(col_ids, row_ids).clamp_(max=col_ids.numel() - 1)
    hit = (col_ids[pos] == row_ids) & nonzero_rows[row_ids]
    sim[hit, pos[hit]] = 1.0


def score_group(
    weight: torch.Tensor,
    nonzero_rows: torch.Tensor,
    group: GroupInput,
    *,
    budget_bytes: int = 256 << 20,
    block_limit_bytes: int = 0,
    token_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and backward BMAS terms, shape (K,) float32, for every response of one group.

    With ``token_weights`` ((vocab,) float32, positive) each direction is instead the weighted mean
    over *distinct* tokens (the robust profile: repetition adds nothing, rare words count most);
    the weighted sums run in float64 so that identical texts still give exactly 1.0.

    ``nonzero_rows`` (vocab,) bool marks rows with a non-zero norm (a token's similarity with
    itself is exactly 1 for those). An empty response or an empty truth scores 0 in both
    directions (SPEC §6). If ``block_limit_bytes`` allows and the truth fits one column chunk, the
    truth×truth block is computed (once; it is stored on ``group.truth`` for the caller to cache).
    """
    device = weight.device
    lengths = group.response_lengths.to(device)
    k = lengths.numel()
    truth = group.truth if group.truth is not None else prepare_truth(group.truth_ids.to(device))
    if truth.total == 0 or group.response_ids.numel() == 0:
        zeros = torch.zeros(k, dtype=torch.float32, device=device)
        return zeros, zeros.clone()
    plan = _plan(truth.uniq.numel(), weight.shape[1], budget_bytes)
    ids = group.response_ids.to(device)
    fits = plan.cols >= truth.uniq.numel() and truth.uniq.numel() ** 2 * FLOAT_BYTES <= block_limit_bytes
    if truth.block is None and fits:
        truth.block = truth_block(weight, nonzero_rows, truth.uniq)

    # Sub-groups of whole responses holding at most plan.tokens tokens (one response may exceed it
    # alone: then only its own index arrays grow, the float buffers stay chunked).
    if int(ids.numel()) <= plan.tokens or k == 1:
        return _score_subgroup(weight, nonzero_rows, truth, ids, lengths, plan, token_weights)
    host_lengths = group.response_lengths.cpu()
    forwards, backwards = [], []
    start_item = start_token = 0
    while start_item < k:
        stop_item, tokens = start_item, 0
        while stop_item < k and (stop_item == start_item or tokens + int(host_lengths[stop_item]) <= plan.tokens):
            tokens += int(host_lengths[stop_item])
            stop_item += 1
        f, b = _score_subgroup(
            weight, nonzero_rows, truth, ids[start_token : start_token + tokens],
            lengths[start_item:stop_item], plan, token_weights,
        )
        forwards.append(f)
        backwards.append(b)
        start_item, start_token = stop_item, start_token + tokens
    return torch.cat(forwards), torch.cat(backwards)


def _score_subgroup(
    weight: torch.Tensor,
    nonzero_rows: torch.Tensor,
    truth: TruthState,
    ids: torch.Tensor,
    lengths: torch.Tensor,
    plan: _Plan,
    token_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    device = weight.device
    k = lengths.numel()
    vocab = weight.shape[0]
    owner = torch.repeat_interleave(torch.arange(k, device=device), lengths)
    # Distinct (response, token) pairs with their counts; then the distinct tokens of the sub-group.
    pair_key, pair_count = torch.unique(owner * vocab + ids, return_counts=True)
    pair_owner = pair_key // vocab
    distinct, pair_row = torch.unique(pair_key - pair_owner * vocab, return_inverse=True)
    n = distinct.numel()
    m = truth.uniq.numel()

    block = truth.block if plan.cols >= m else None
    if block is not None and n <= plan.rows and pair_row.numel() <= plan.rows:
        return _score_in_one_chunk(
            weight, truth, distinct, pair_row, pair_owner, pair_count, lengths, token_weights
        )

    # Rows of response tokens that occur in the truth come from the cached block; put them first so
    # every row chunk has a single source (block gather, or a matmul for novel tokens).
    if block is not None:
        pos = torch.searchsorted(truth.uniq, distinct).clamp_(max=m - 1)
        in_truth = truth.uniq[pos] == distinct
        order = torch.argsort((~in_truth).to(torch.int8), stable=True)
        distinct, pos = distinct[order], pos[order]
        n_known = in_truth.sum()
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(n, device=device)
        pair_row = inverse[pair_row]
    else:
        pos = None
        n_known = torch.zeros((), dtype=torch.int64, device=device)

    # Pairs ordered by row, so that each row chunk owns one contiguous slice of pairs.
    by_row = torch.argsort(pair_row, stable=True)
    rows_sorted = pair_row[by_row]
    owners_sorted = pair_owner[by_row]

    row_max = torch.full((n,), float("-inf"), dtype=torch.float32, device=device)
    col_weights = _column_weights(truth, token_weights)
    backward = torch.zeros(k, dtype=col_weights.dtype, device=device)
    known = 0 if block is None else int(n_known)
    # Row chunks: known rows [0, known), novel rows [known, n), each cut every plan.rows.
    starts = list(range(0, known, plan.rows)) + list(range(known, n, plan.rows))
    stops = starts[1:] + [n]
    if len(starts) == 1:
        bounds = [0, rows_sorted.numel()]  # the common case: no device sync needed
    else:
        edges = torch.tensor(starts + [n], device=device)
        bounds = torch.searchsorted(rows_sorted, edges).tolist()

    for c0 in range(0, m, plan.cols):
        c1 = min(c0 + plan.cols, m)
        cols = truth.uniq[c0:c1]
        col_max = torch.full((k, c1 - c0), float("-inf"), dtype=torch.float32, device=device)
        for index, (r0, r1) in enumerate(zip(starts, stops)):
            if block is not None and r0 < known:
                sim = block[pos[r0:r1]]  # a full-width block: plan.cols >= m here
            else:
                sim = _similarity(weight, distinct[r0:r1], cols)
                if block is None:
                    _set_self_similarity(sim, distinct[r0:r1], cols, nonzero_rows)
            torch.maximum(row_max[r0:r1], sim.amax(dim=1), out=row_max[r0:r1])
            lo, hi = bounds[index], bounds[index + 1]
            for p in range(lo, hi, plan.rows):  # slice pairs too: the gathered copy stays in budget
                q = min(p + plan.rows, hi)
                gathered = sim[rows_sorted[p:q] - r0]
                col_max.scatter_reduce_(0, owners_sorted[p:q, None].expand(-1, c1 - c0), gathered, "amax")
        # Every response here has ≥1 token (empty ones own no pair): replace its -inf by 0 anyway
        # so an empty response contributes 0, never -inf·0.
        col_max = torch.where(lengths[:, None] > 0, col_max, torch.zeros((), device=device))
        backward += col_max.to(col_weights.dtype) @ col_weights[c0:c1]
    return _directions(row_max[pair_row], distinct[pair_row], pair_owner, pair_count, lengths,
                       backward, col_weights, truth, token_weights)


def _column_weights(truth: TruthState, token_weights: torch.Tensor | None) -> torch.Tensor:
    """Per distinct truth token: its count (paper), or its weight, once (robust, float64)."""
    if token_weights is None:
        return truth.counts
    return token_weights[truth.uniq].double()


def _directions(
    pair_best: torch.Tensor,
    pair_token: torch.Tensor,
    pair_owner: torch.Tensor,
    pair_count: torch.Tensor,
    lengths: torch.Tensor,
    backward_sum: torch.Tensor,
    col_weights: torch.Tensor,
    truth: TruthState,
    token_weights: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both directional means from per-pair best cosines and the weighted column-max sums.

    Paper: forward averages over every response token (a pair counts ``pair_count`` times),
    backward over every truth token. Robust: each distinct token counts once with its weight, and
    the sums run in float64, so a perfect match rounds to exactly 1.0 in float32.
    """
    k = lengths.numel()
    device = pair_best.device
    if token_weights is None:
        forward = torch.zeros(k, dtype=torch.float32, device=device)
        forward.index_add_(0, pair_owner, pair_count.float() * pair_best)
        return forward.div_(lengths.clamp(min=1).float()), backward_sum.div_(float(truth.total))
    pair_weight = token_weights[pair_token].double()
    numerator = torch.zeros(k, dtype=torch.float64, device=device)
    numerator.index_add_(0, pair_owner, pair_weight * pair_best.double())
    denominator = torch.zeros(k, dtype=torch.float64, device=device)
    denominator.index_add_(0, pair_owner, pair_weight)
    forward = numerator / denominator.clamp(min=torch.finfo(torch.float64).tiny)
    backward = backward_sum / col_weights.sum()
    return forward.float(), backward.float()


def _score_in_one_chunk(
    weight: torch.Tensor,
    truth: TruthState,
    distinct: torch.Tensor,
    pair_row: torch.Tensor,
    pair_owner: torch.Tensor,
    pair_count: torch.Tensor,
    lengths: torch.Tensor,
    token_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The common case, when every row and pair fits one chunk and the truth block is cached.

    Same maths as the chunked path with half the sorts and gathers (which, not the matmul, are
    most of the kernel's time at GRPO sizes): every row is gathered from the truth block at once,
    which is exact for tokens that occur in the truth, then the rows of novel tokens are replaced
    by a matmul. No chunk bookkeeping, so pairs need no ordering by row.
    """
    block = truth.block
    assert block is not None
    m = truth.uniq.numel()
    pos = torch.searchsorted(truth.uniq, distinct).clamp_(max=m - 1)
    sim = block[pos]
    novel = torch.nonzero(truth.uniq[pos] != distinct, as_tuple=True)[0]
    if novel.numel():
        sim[novel] = _similarity(weight, distinct[novel], truth.uniq)
    k = lengths.numel()
    col_max = torch.full((k, m), float("-inf"), dtype=torch.float32, device=sim.device)
    col_max.scatter_reduce_(0, pair_owner[:, None].expand(-1, m), sim[pair_row], "amax")
    col_max = torch.where(lengths[:, None] > 0, col_max, torch.zeros((), device=sim.device))
    col_weights = _column_weights(truth, token_weights)
    backward = col_max.to(col_weights.dtype) @ col_weights
    return _directions(sim.amax(dim=1)[pair_row], distinct[pair_row], pair_owner, pair_count, lengths,
                       backward, col_weights, truth, token_weights)


