"""The BMAS kernel (SPEC §6): Bidirectional Max-Average Similarity over input-embedding rows.

    BMAS = (1/N) Σ_i max_j S_ij  +  (1/M) Σ_j max_i S_ij,     S = R Gᵀ (cosines)

The table is static, so a cosine depends only on the two token *ids*. For one ground truth (a
GRPO group shares one) similarities are needed only between the *distinct* tokens of its responses
(its "rows") and the *distinct* tokens of the truth (its "columns"):

* forward term ``max_j S_ij`` depends only on response token i's id: a row max, summed over the
  tokens of each response;
* backward term ``max_i S_ij`` depends on which ids response k contains: a max over the rows of
  the distinct (response, token) pairs of k, then a sum weighted by how often each truth id occurs.

**One flat computation per batch.** The whole device batch is one set of flat arrays, and the
number of torch ops does not depend on how many groups it holds (on a GPU the cost of this kernel
is kernel launches and host synchronisations, not FLOPs):

1. *Host stage* (:meth:`BmasKernel.prepare`, numpy, safe on another thread while the device works
   on the previous batch): groups are ordered by truth size, and every token gets one key,
   ``(group, token id, response)`` packed in an int32 (int64 only when items × vocab overflows).
   Ids, keys and the few per-group/per-item arrays travel in **one** buffer (pinned on CUDA).
2. *Dedup*: **one** stable sort of the keys. Equal neighbours mark repeated (response, token)
   pairs; a change of token or group marks a new row. Cumulative sums number rows and pairs.
3. **One** host read of sizes (rows and pairs per group, one small copy) plans the matmuls.
4. *Block-diagonal similarities*: consecutive groups form chunks sized by the byte budget; each
   chunk is one padded ``bmm`` (rows × truth columns of its own group, no cross-group FLOPs),
   gathers, an in-place exact 1.0 for a token against itself, a row max and a segment max
   (``scatter_reduce(amax)``) of each response's pairs. A group too big for a chunk alone is
   tiled by truth columns, rows and pairs, so memory stays bounded whatever the text lengths.
5. *Segment sums*: forward sums are float64 cumulative sums over the batch's tokens in response
   order, read at response boundaries; backward sums are dense row sums. No atomic sums (the only
   scatter that meets repeated indices is a max, which no order changes): on any device, the same
   batch gives the same bytes run after run. **One** copy brings every result home.

Padding never counts: a padded truth column repeats a real column of the same group (so no row max
moves) and weighs 0; the extra last column of every tile, where rows without a self-match write
their 1.0, is left out of row maxima and weighs 0 too; padded rows are never read. Maxima start at
-inf, never 0 (SPEC §6).

On CUDA the rows stay in the table's dtype (bf16) and the matmul accumulates and writes float32
(``bmm(..., out_dtype=torch.float32)``); on CPU gathered half-precision rows are widened to float32
first (CPU half matmuls are slow). Products of two bf16 values are exact in float32, so only the
accumulation order differs (~1e-7).

This module is torch and numpy only: no HTTP, no tokenizer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

FLOAT_BYTES = 4
# A chunk's float buffers on CPU: cache-sized, since memory traffic, not launches, is the CPU's
# cost (2 and 4 MiB measured fastest on the GRPO workload, 8 to 256 MiB slower).
CPU_CHUNK_BYTES = 4 << 20
_INT32_LIMIT = 2**31


@dataclass(frozen=True)
class TruthState:
    """What the kernel needs of one ground truth (host memory), computed once and cached.

    Host-side on purpose: the device needs a truth's columns only inside one batch's flat buffer,
    so nothing per truth stays resident on the device and a table swap frees everything.
    """

    uniq: np.ndarray  # (m,) int64, sorted distinct ids
    counts: np.ndarray  # (m,) int64, occurrences of each
    total: int  # M, the truth's length in tokens

    @property
    def nbytes(self) -> int:
        return int(self.uniq.nbytes + self.counts.nbytes)


def prepare_truth(truth_ids: np.ndarray | torch.Tensor | Sequence[int]) -> TruthState:
    """Distinct ids and counts of a truth's token ids."""
    if isinstance(truth_ids, torch.Tensor):
        truth_ids = truth_ids.detach().cpu().numpy()
    ids = np.asarray(truth_ids, dtype=np.int64).reshape(-1)
    uniq, counts = np.unique(ids, return_counts=True)
    return TruthState(uniq=uniq.astype(np.int64), counts=counts.astype(np.int64), total=int(ids.size))


@dataclass(frozen=True)
class GroupInput:
    """One ground truth and the responses scored against it, as flat host arrays.

    ``response_ids`` is every response's ids concatenated and ``response_lengths`` their lengths,
    so a group travels as two arrays instead of K small ones.
    """

    truth: TruthState
    response_ids: np.ndarray
    response_lengths: np.ndarray
    weighted: bool = False  # the robust profile: idf-weighted distinct tokens


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


# ----------------------------------------------------------------------------- host-side batch


@dataclass
class _Slice:
    """One flat computation: the units (groups or pieces of groups) one worker scores at once.

    Units are ordered by truth size (largest first) so that a chunk of consecutive units pads
    little; within a unit, responses keep their order. Everything is host memory except ``buffer``,
    which is what the device stage copies over (pinned on CUDA).
    """

    items: np.ndarray  # (K,) index of each response in the caller's order
    lengths: np.ndarray  # (K,) tokens of each response (all > 0)
    unit_items: np.ndarray  # (U+1,) prefix sums of responses per unit
    unit_tokens: np.ndarray  # (U+1,) prefix sums of tokens per unit
    unit_cols: np.ndarray  # (U+1,) prefix sums of distinct truth tokens per unit
    col_tokens: np.ndarray  # (sum m,) distinct truth ids, unit after unit
    col_weights: np.ndarray  # (sum m,) float64 weight of each column (count, or idf weight once)
    weighted: np.ndarray  # (K,) bool: the robust profile's directions
    backward_den: np.ndarray  # (K,) float64: truth length (paper) or sum of column weights (robust)
    key_dtype: torch.dtype
    buffer: torch.Tensor  # packed device inputs (see _pack)
    layout: dict[str, tuple[int, int]]  # name -> (offset, length) in ``buffer``

    @property
    def units(self) -> int:
        return int(self.unit_items.size - 1)

    @property
    def tokens(self) -> int:
        return int(self.unit_tokens[-1])


@dataclass
class FlatBatch:
    """Everything the device stage needs for one batch: the output of :meth:`BmasKernel.prepare`."""

    responses: int  # responses the caller passed (results come back in that order)
    slices: list[_Slice] = field(default_factory=list)


@dataclass(frozen=True)
class _Tile:
    """One matmul chunk: units [u0, u1) padded to ``rows`` rows each, truth columns [c0, c1)
    (all of them unless the unit is tiled), plus one extra column that no row max reads."""

    u0: int
    u1: int
    rows: int  # padded rows per unit (Dmax)
    c0: int
    c1: int
    pad_offset: int  # first padded row of u0 in the slice's padded row space
    col_offset: int  # offset of this tile's (units × width) columns in the plan buffer
    row_blocks: tuple[tuple[int, int], ...]  # matmul row blocks (several only when u1 == u0 + 1)
    pair_blocks: tuple[tuple[int, int], ...]  # pair ranges gathered at once
    first: bool  # first column tile of its units (writes rather than combines)
    whole: bool  # every column of every unit (no column-range test needed)

    @property
    def width(self) -> int:
        return self.c1 - self.c0 + 1

    @property
    def units(self) -> int:
        return self.u1 - self.u0


def _balanced_units(
    item_group: np.ndarray, lengths: np.ndarray, max_tokens: int, max_items: int
) -> np.ndarray:
    """Unit number of each response: its group, except that a group with more than ``max_tokens``
    tokens or ``max_items`` responses is cut into runs of whole responses (a response's terms do
    not depend on which other responses share its group, only FLOPs do)."""
    starts = np.flatnonzero(np.r_[True, item_group[1:] != item_group[:-1]]) if item_group.size else item_group
    ends = np.r_[starts[1:], item_group.size]
    tokens = np.add.reduceat(lengths, starts) if item_group.size else lengths
    big = np.flatnonzero((tokens > max_tokens) | ((ends - starts) > max_items))
    cut = np.zeros(item_group.size, dtype=bool)
    cut[starts] = True
    for g in big:  # rare: only oversized groups are walked response by response
        filled = count = 0
        for i in range(starts[g], ends[g]):
            if count and (filled + lengths[i] > max_tokens or count >= max_items):
                cut[i] = True
                filled = count = 0
            filled += int(lengths[i])
            count += 1
    return np.cumsum(cut) - 1


class BmasKernel:
    """The batched kernel bound to one table: host stage :meth:`prepare`, device stage :meth:`run`.

    ``slices`` is how many independent flat computations a batch is split into (CPU worker
    threads; 1 on CUDA). ``budget_bytes`` bounds the float buffers of all slices together;
    ``chunk_bytes`` (at most the per-slice budget) is the size of one matmul chunk: the whole
    budget on CUDA (fewest launches), cache-sized on CPU (where memory traffic, not launches, is
    the cost).
    """

    def __init__(
        self,
        weight: torch.Tensor,
        nonzero_rows: torch.Tensor,
        token_weights: torch.Tensor | None = None,
        *,
        budget_bytes: int = 256 << 20,
        chunk_bytes: int | None = None,
        slices: int = 1,
    ) -> None:
        self.weight = weight
        self.device = weight.device
        self.vocab, self.dim = int(weight.shape[0]), int(weight.shape[1])
        self.nonzero_rows = nonzero_rows.to(self.device)
        if token_weights is None:
            token_weights = torch.ones(self.vocab, dtype=torch.float32, device=self.device)
        self.token_weights = token_weights.to(self.device)
        self._host_weights = token_weights.detach().cpu().double().numpy()
        self.slices = max(1, slices)
        self.budget_bytes = max(1, budget_bytes)
        self.slice_bytes = max(1, self.budget_bytes // self.slices)
        default_chunk = self.slice_bytes if self.device.type == "cuda" else min(self.slice_bytes, CPU_CHUNK_BYTES)
        self.chunk_bytes = max(1, min(self.slice_bytes, chunk_bytes if chunk_bytes is not None else default_chunk))
        self.cuda = self.device.type == "cuda"
        half = weight.dtype in (torch.bfloat16, torch.float16)
        # CUDA: half rows, float32 output from the matmul itself; CPU: rows widened to float32 first.
        self._out_dtype = self.cuda and half
        self._widen = half and not self.cuda
        self._row_bytes = self.dim * (weight.element_size() + (FLOAT_BYTES if self._widen else 0))

    # ------------------------------------------------------------------------- host stage

    def prepare(
        self,
        ids: np.ndarray,
        lengths: np.ndarray,
        sizes: Sequence[int],
        states: Sequence[TruthState],
        weighted: Sequence[bool] | None = None,
    ) -> FlatBatch:
        """Host stage: ``ids``/``lengths`` hold the responses group after group, ``sizes[g]`` of
        them scored against ``states[g]`` (robust profile when ``weighted[g]``).

        Responses with no tokens, and groups whose truth has none, score 0 and never reach the
        device. Pure numpy plus one pinned copy on CUDA; reads nothing the device stage writes.
        """
        ids = np.asarray(ids, dtype=np.int64)
        lengths = np.asarray(lengths, dtype=np.int64)
        sizes_arr = np.asarray(sizes, dtype=np.int64)
        flags = np.zeros(len(sizes_arr), dtype=bool) if weighted is None else np.asarray(weighted, dtype=bool)
        batch = FlatBatch(responses=int(lengths.size))
        if lengths.size == 0:
            return batch
        m_group = np.fromiter((s.uniq.size for s in states), dtype=np.int64, count=len(states))
        item_group = np.repeat(np.arange(sizes_arr.size), sizes_arr)
        live = np.flatnonzero((lengths > 0) & (m_group[item_group] > 0))
        if live.size == 0:
            return batch
        starts = np.cumsum(lengths) - lengths
        live_group, live_len = item_group[live], lengths[live]
        share = max(1, int(live_len.sum()) // self.slices) if self.slices > 1 else 1 << 62
        # A unit's per-response buffers (col maxima: responses x columns) must fit a chunk.
        max_items = max(1, self.chunk_bytes // (8 * 28))
        unit = _balanced_units(live_group, live_len, share, max_items)
        unit_group = live_group[np.r_[0, np.flatnonzero(np.diff(unit)) + 1]]
        # Largest truths first (stable): consecutive units then pad to similar widths.
        order = np.argsort(-m_group[unit_group], kind="stable")
        for s in range(self.slices):
            chosen = order[s :: self.slices]  # round robin over sizes: slices get alike mixes
            if chosen.size:
                batch.slices.append(self._slice(chosen, unit, unit_group, live, live_len, starts, ids,
                                                states, m_group, flags))
        return batch

    def _slice(
        self,
        chosen: np.ndarray,
        unit: np.ndarray,
        unit_group: np.ndarray,
        live: np.ndarray,
        live_len: np.ndarray,
        starts: np.ndarray,
        ids: np.ndarray,
        states: Sequence[TruthState],
        m_group: np.ndarray,
        flags: np.ndarray,
    ) -> _Slice:
        """Flat arrays of the units ``chosen`` (in that order)."""
        unit_first = np.r_[0, np.flatnonzero(np.diff(unit)) + 1]
        unit_count = np.diff(np.r_[unit_first, unit.size])
        # Responses of the chosen units, unit after unit.
        per_unit = unit_count[chosen]
        unit_items = np.r_[0, np.cumsum(per_unit)]
        pick = np.repeat(unit_first[chosen] - unit_items[:-1], per_unit) + np.arange(unit_items[-1])
        items, lens = live[pick], live_len[pick]
        k = items.size
        out_starts = np.cumsum(lens) - lens
        total = int(lens.sum())
        positions = np.repeat(starts[items] - out_starts, lens) + np.arange(total)
        tokens = ids[positions]
        item_of_pos = np.repeat(np.arange(k), lens)
        item_unit = np.repeat(np.arange(chosen.size), per_unit)
        unit_of_pos = item_unit[item_of_pos]
        groups = unit_group[chosen]
        m = m_group[groups]
        unit_cols = np.r_[0, np.cumsum(m)]
        col_tokens = np.concatenate([states[g].uniq for g in groups])
        weighted_unit = flags[groups]
        counts = np.concatenate([states[g].counts for g in groups]).astype(np.float64)
        col_weights = np.where(np.repeat(weighted_unit, m), self._host_weights[col_tokens], counts)
        truth_total = np.fromiter((states[g].total for g in groups), dtype=np.float64, count=groups.size)
        den_unit = np.where(weighted_unit, np.add.reduceat(col_weights, unit_cols[:-1]), truth_total)
        unit_tokens = np.r_[0, np.cumsum(np.add.reduceat(lens, unit_items[:-1]))]
        # key = (unit, token, response in unit), unit-major: a unit's keys are one contiguous range.
        first_item = unit_items[:-1][unit_of_pos]
        size = per_unit[unit_of_pos]
        key = first_item * self.vocab + tokens * size + (item_of_pos - first_item)
        wide = k * self.vocab >= _INT32_LIMIT or total >= _INT32_LIMIT
        np_dtype, key_dtype = (np.int64, torch.int64) if wide else (np.int32, torch.int32)
        parts = {
            "key": key,
            "ids": tokens,
            "item": item_of_pos,
            "unit_start": unit_tokens[:-1],
            "unit_last": unit_tokens[1:] - 1,
            "item_unit": item_unit,
            "col_keys": np.repeat(np.arange(chosen.size), m) * self.vocab + col_tokens,
            "col_start": unit_cols[:-1],
            "item_start": out_starts,
            "item_end": out_starts + lens,
        }
        buffer, layout = self._pack(parts, np_dtype)
        return _Slice(
            items=items, lengths=lens, unit_items=unit_items, unit_tokens=unit_tokens, unit_cols=unit_cols,
            col_tokens=col_tokens, col_weights=col_weights, weighted=np.repeat(weighted_unit, per_unit),
            backward_den=np.repeat(den_unit, per_unit), key_dtype=key_dtype, buffer=buffer, layout=layout,
        )

    def _pack(self, parts: dict[str, np.ndarray], dtype: type) -> tuple[torch.Tensor, dict[str, tuple[int, int]]]:
        """One host buffer for every array the device needs (pinned on CUDA: one async copy)."""
        layout: dict[str, tuple[int, int]] = {}
        offset = 0
        for name, values in parts.items():
            layout[name] = (offset, int(values.size))
            offset += int(values.size)
        packed = np.empty(offset, dtype=dtype)
        for name, values in parts.items():
            start, length = layout[name]
            packed[start : start + length] = values
        tensor = torch.from_numpy(packed)
        return (tensor.pin_memory() if self.cuda else tensor), layout

    # ------------------------------------------------------------------------- device stage

    def run(
        self, batch: FlatBatch, map_slices: Callable[..., Iterable[object]] = map
    ) -> tuple[np.ndarray, np.ndarray]:
        """Device stage: forward and backward terms (float32) of every response, caller's order.

        ``map_slices`` runs the slices (``map``, or a thread pool's ``map`` on CPU).
        """
        forward = np.zeros(batch.responses, dtype=np.float32)
        backward = np.zeros(batch.responses, dtype=np.float32)
        for sl, (f, b) in zip(batch.slices, map_slices(self._run_slice, batch.slices)):
            forward[sl.items] = f
            backward[sl.items] = b
        return forward, backward

    def _run_slice(self, sl: _Slice) -> tuple[np.ndarray, np.ndarray]:
        dev = sl.buffer.to(self.device, non_blocking=True)

        def part(name: str) -> torch.Tensor:
            start, length = sl.layout[name]
            return dev[start : start + length]

        n = sl.tokens
        sorted_keys, perm = torch.sort(part("key"), stable=True)  # stable: same bytes every run
        tok_s = part("ids").index_select(0, perm)
        item_s = part("item").index_select(0, perm)
        new_pair = torch.empty(n, dtype=torch.bool, device=self.device)
        new_pair[:1].fill_(True)
        torch.ne(sorted_keys[1:], sorted_keys[:-1], out=new_pair[1:])
        new_row = torch.empty_like(new_pair)
        new_row[:1].fill_(True)
        torch.ne(tok_s[1:], tok_s[:-1], out=new_row[1:])
        new_row.index_fill_(0, part("unit_start").long(), True)  # a new unit starts a new row
        row_id = new_row.cumsum(0).sub_(1)
        pair_id = new_pair.cumsum(0).sub_(1)
        last = part("unit_last")
        counts = _to_host(torch.cat([row_id.index_select(0, last), pair_id.index_select(0, last)]))
        units = sl.units
        row_end, pair_end = counts[:units] + 1, counts[units:] + 1

        tiles, plan, pad_rows = self._plan(sl, row_end, pair_end)
        plan_dev = plan.to(self.device, non_blocking=True)
        base_local, base_global = plan_dev[:units], plan_dev[units : 2 * units]
        rows, pairs = int(row_end[-1]), int(pair_end[-1])
        row_tok = torch.zeros(rows, dtype=sl.key_dtype, device=self.device).scatter_(0, row_id, tok_s)
        row_item = torch.zeros(rows, dtype=sl.key_dtype, device=self.device).scatter_(0, row_id, item_s)
        item_unit = part("item_unit")
        row_unit = item_unit.index_select(0, row_item)
        # Where a row's token occurs in its own truth: the exact 1.0 of a token with itself.
        col_keys = part("col_keys")
        row_key = row_unit * self.vocab + row_tok
        col_pos = torch.searchsorted(col_keys, row_key).clamp_(max=col_keys.numel() - 1)
        hit = (col_keys.index_select(0, col_pos) == row_key) & self.nonzero_rows.index_select(0, row_tok)
        col_in_unit = col_pos - part("col_start").index_select(0, row_unit)
        arange = torch.arange(rows, device=self.device)
        pos_local = arange + base_local.index_select(0, row_unit)
        pos_global = arange + base_global.index_select(0, row_unit)
        row_tok_pad = torch.zeros(pad_rows, dtype=torch.int64, device=self.device)
        row_tok_pad.scatter_(0, pos_global, row_tok.long())
        pair_row = torch.zeros(pairs, dtype=torch.int64, device=self.device).scatter_(0, pair_id, row_id)
        pair_item = torch.zeros(pairs, dtype=torch.int64, device=self.device).scatter_(0, pair_id, item_s.long())
        pair_pos = pos_local.index_select(0, pair_row)
        row_max_pad = torch.empty(pad_rows, dtype=torch.float32, device=self.device)
        backward_sum = torch.zeros(sl.items.size, dtype=torch.float64, device=self.device)
        cols_tok = plan_dev[2 * units :]
        for tile in tiles:
            self._run_tile(sl, tile, row_tok_pad, cols_tok, pos_local, hit, col_in_unit, pair_pos, pair_item,
                           item_unit, row_max_pad, backward_sum, row_end)

        # Forward sums in response order (float64 cumulative sums, read at response boundaries).
        row_max = row_max_pad.index_select(0, pos_global)
        per_token = torch.empty(n, dtype=torch.float64, device=self.device)
        per_token.scatter_(0, perm, row_max.index_select(0, row_id).double())
        sums = [_segment_sums(per_token, part("item_start"), part("item_end"))]
        if sl.weighted.any():  # robust: each distinct token once, idf-weighted
            first = torch.zeros(n, dtype=torch.bool, device=self.device).scatter_(0, perm, new_pair)
            token_w = self.token_weights.index_select(0, part("ids")).double().mul_(first)
            sums.append(_segment_sums(token_w * per_token, part("item_start"), part("item_end")))
            sums.append(_segment_sums(token_w, part("item_start"), part("item_end")))
        out = _to_host(torch.stack([*sums, backward_sum]))
        return self._finish(sl, out)

    def _run_tile(
        self,
        sl: _Slice,
        tile: _Tile,
        row_tok_pad: torch.Tensor,
        cols_tok: torch.Tensor,
        pos_local: torch.Tensor,
        hit: torch.Tensor,
        col_in_unit: torch.Tensor,
        pair_pos: torch.Tensor,
        pair_item: torch.Tensor,
        item_unit: torch.Tensor,
        row_max_pad: torch.Tensor,
        backward_sum: torch.Tensor,
        row_end: np.ndarray,
    ) -> None:
        """Similarities of one chunk, its row maxima and its responses' weighted column maxima."""
        b, d, w = tile.units, tile.rows, tile.width
        cols = cols_tok[tile.col_offset : tile.col_offset + b * w]
        col_weights = cols_tok[tile.col_offset + b * w : tile.col_offset + 2 * b * w].view(torch.float64)
        truth_rows = self._rows(cols).view(b, w, self.dim).transpose(1, 2)
        sim = torch.empty(b, d, w, dtype=torch.float32, device=self.device)
        for r0, r1 in tile.row_blocks:
            rows = self._rows(row_tok_pad[tile.pad_offset + r0 * b : tile.pad_offset + r1 * b]).view(b, r1 - r0, -1)
            target = sim if (r0, r1) == (0, d) else sim[:, r0:r1]
            if self._out_dtype:
                torch.bmm(rows, truth_rows, out_dtype=torch.float32, out=target)
            else:
                torch.bmm(rows, truth_rows, out=target)
        del rows, truth_rows  # freed before the pair gather: a chunk's peak is the larger of the two
        sim.clamp_(-1.0, 1.0)
        # Exact 1.0 for a (non-zero) token against itself; rows without one write the extra column.
        r0 = int(row_end[tile.u0 - 1]) if tile.u0 else 0
        r1 = int(row_end[tile.u1 - 1])
        col = col_in_unit[r0:r1]
        inside = hit[r0:r1] if tile.whole else hit[r0:r1] & (col >= tile.c0) & (col < tile.c1)
        sim.view(-1).index_fill_(0, pos_local[r0:r1] * w + torch.where(inside, col - tile.c0, w - 1), 1.0)
        row_max = row_max_pad[tile.pad_offset : tile.pad_offset + b * d].view(b, d)
        if tile.first:
            torch.amax(sim[:, :, :-1], dim=2, out=row_max)
        else:
            torch.maximum(row_max, sim[:, :, :-1].amax(dim=2), out=row_max)
        a0, a1 = int(sl.unit_items[tile.u0]), int(sl.unit_items[tile.u1])
        # Every response here has a pair in every block of columns, so no -inf survives the max.
        col_max = torch.full((a1 - a0, w), float("-inf"), dtype=torch.float32, device=self.device)
        flat_sim = sim.view(b * d, w)
        for p0, p1 in tile.pair_blocks:
            owners = (pair_item[p0:p1] - a0).unsqueeze(1).expand(-1, w)
            col_max.scatter_reduce_(0, owners, flat_sim.index_select(0, pair_pos[p0:p1]), "amax")
        unit_weights = col_weights.view(b, w).index_select(0, item_unit[a0:a1] - tile.u0)
        weighted = torch.mul(col_max, unit_weights)  # float64 (the weights' dtype)
        if tile.first:
            torch.sum(weighted, dim=1, out=backward_sum[a0:a1])
        else:
            backward_sum[a0:a1] += weighted.sum(dim=1)

    def _rows(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.weight.index_select(0, ids)
        return rows.float() if self._widen else rows

    def _finish(self, sl: _Slice, out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Means from the sums (host, float64), rounded once to float32."""
        forward = out[0] / sl.lengths
        if out.shape[0] == 4:
            robust = out[1] / np.maximum(out[2], np.finfo(np.float64).tiny)
            forward = np.where(sl.weighted, robust, forward)
        backward = out[-1] / sl.backward_den
        return forward.astype(np.float32) + np.float32(0.0), backward.astype(np.float32) + np.float32(0.0)

    # ------------------------------------------------------------------------- planning

    def _peak(self, units: Any, rows: Any, width: int, pairs: Any, items: Any) -> tuple[Any, Any]:
        """Float bytes of a chunk: (similarities plus what the pairs need after the matmul: gathered
        rows, per-response column maxima in float32 then float64; the whole peak, the similarities
        plus the larger of that and the matmul's inputs, response and truth rows, freed after it)."""
        sims = FLOAT_BYTES * units * rows * width
        pairs_bytes = FLOAT_BYTES * pairs * width + 28 * items * width
        matmul = (units * rows + units * width) * self._row_bytes
        return sims + pairs_bytes, sims + np.maximum(matmul, pairs_bytes)

    def _plan(self, sl: _Slice, row_end: np.ndarray, pair_end: np.ndarray) -> tuple[list[_Tile], torch.Tensor, int]:
        """Chunks of consecutive units within ``chunk_bytes``, and the plan buffer: per unit the
        padded-row bases (chunk-local and slice-global), per tile its truth columns and weights."""
        units = sl.units
        row_start = np.r_[0, row_end[:-1]]
        pair_start = np.r_[0, pair_end[:-1]]
        rows = row_end - row_start
        m = np.diff(sl.unit_cols)
        items = np.diff(sl.unit_items)
        base_local = np.empty(units, dtype=np.int64)
        base_global = np.empty(units, dtype=np.int64)
        tiles: list[_Tile] = []
        columns: list[tuple[int, int, int, int]] = []  # (u0, u1, c0, width) per tile
        pad = cols_offset = 0
        u = 0
        while u < units:
            width = int(m[u]) + 1  # units are sorted by m, largest first
            # The longest run [u, u1) whose peak fits, every candidate u1 at once (one numpy pass).
            d_run = np.maximum.accumulate(rows[u:])
            count = np.arange(1, units - u + 1)
            _, peaks = self._peak(count, d_run, width, pair_end[u:] - pair_start[u],
                                  sl.unit_items[u + 1 :] - sl.unit_items[u])
            u1 = u + max(1, int(np.argmax(peaks > self.chunk_bytes)) if peaks[-1] > self.chunk_bytes else count[-1])
            d = int(d_run[u1 - u - 1])
            # A unit alone over the chunk only for its embedding rows is still one chunk (the rows
            # are streamed by the matmul; tiling would gather them again for every column tile).
            work, peak = self._peak(1, d, width, int(pair_end[u] - pair_start[u]), int(items[u]))
            alone = peak <= self.chunk_bytes or (work <= self.chunk_bytes and peak <= self.slice_bytes)
            base_local[u:u1] = np.arange(u1 - u) * d - row_start[u:u1]
            base_global[u:u1] = pad + base_local[u:u1]
            if u1 > u + 1 or alone:
                tiles.append(_Tile(u, u1, d, 0, width - 1, pad, cols_offset, ((0, d),),
                                   ((int(pair_start[u]), int(pair_end[u1 - 1])),), True, True))
                columns.append((u, u1, 0, width))
                cols_offset += 2 * (u1 - u) * width
            else:
                for tile in self._tiles(u, d, int(m[u]), int(items[u]), int(pair_start[u]), int(pair_end[u]),
                                        pad, cols_offset):
                    tiles.append(tile)
                    columns.append((u, u + 1, tile.c0, tile.width))
                    cols_offset += 2 * tile.width
            pad += (u1 - u) * d
            u = u1
        plan = np.empty(2 * units + cols_offset, dtype=np.int64)
        plan[:units], plan[units : 2 * units] = base_local, base_global
        offset = 2 * units
        for u0, u1, c0, width in columns:
            tok, wts = self._columns(sl, u0, u1, c0, width, m)
            plan[offset : offset + tok.size] = tok
            plan[offset + tok.size : offset + 2 * tok.size] = wts.view(np.int64)
            offset += 2 * tok.size
        tensor = torch.from_numpy(plan)
        return tiles, (tensor.pin_memory() if self.cuda else tensor), max(pad, 1)

    def _tiles(
        self, u: int, rows: int, m: int, items: int, p0: int, p1: int, pad: int, offset: int
    ) -> list[_Tile]:
        """A unit too big for one chunk: column tiles, each with row blocks and pair blocks. The
        similarity tile, the pairs' gathered rows and the column maxima each take a share of
        ``chunk_bytes``, the embedding rows a share of the slice's budget (at least one column, row
        and pair each, whatever the budget)."""
        chunk, rows_budget = self.chunk_bytes, self.slice_bytes
        cols = min(m, max(1, chunk // (4 * FLOAT_BYTES * max(rows, 1)) - 1),
                   max(1, rows_budget // (4 * self._row_bytes) - 1), max(1, chunk // (4 * 28 * max(items, 1)) - 1))
        width = cols + 1
        row_block = max(1, rows_budget // (4 * self._row_bytes))
        pair_block = max(1, chunk // (4 * FLOAT_BYTES * width))
        row_blocks = tuple((r, min(r + row_block, rows)) for r in range(0, rows, row_block))
        pair_blocks = tuple((q, min(q + pair_block, p1)) for q in range(p0, p1, pair_block))
        tiles = []
        for c0 in range(0, m, cols):
            c1 = min(c0 + cols, m)
            tiles.append(_Tile(u, u + 1, rows, c0, c1, pad, offset, row_blocks, pair_blocks, c0 == 0, False))
            offset += 2 * (c1 - c0 + 1)
        return tiles

    @staticmethod
    def _columns(sl: _Slice, u0: int, u1: int, c0: int, width: int, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Truth ids and weights of a tile's columns, (units × width): past a unit's last column,
        its first column again with weight 0 (a real cosine, so no row max moves)."""
        j = c0 + np.arange(width)[None, :]
        real = j < np.minimum(m[u0:u1, None], c0 + width - 1)
        index = sl.unit_cols[u0:u1, None] + np.where(real, j, 0)
        tokens = sl.col_tokens[index]
        weights = np.where(real, sl.col_weights[index], 0.0)
        return tokens.reshape(-1), np.ascontiguousarray(weights.reshape(-1), dtype=np.float64)


def _segment_sums(values: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """Sum of ``values[starts[k]:ends[k]]`` for every k, from one float64 cumulative sum: no
    atomics, so the same bytes on every run, on any device."""
    cumulative = torch.zeros(values.numel() + 1, dtype=torch.float64, device=values.device)
    torch.cumsum(values, 0, out=cumulative[1:])
    return cumulative.index_select(0, ends) - cumulative.index_select(0, starts)


def _to_host(tensor: torch.Tensor) -> np.ndarray:
    """The kernel's only device-to-host reads (two per slice: sizes, then results)."""
    return tensor.cpu().numpy()


__all__ = [
    "FLOAT_BYTES", "BmasKernel", "FlatBatch", "GroupInput", "TruthState", "bmas_reference", "prepare_truth",
    "weighted_reference",
]
