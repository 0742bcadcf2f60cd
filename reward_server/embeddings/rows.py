"""Row normalisation and the content hash of the stored table.

Normalising once at load turns every later cosine into a plain matrix product. The maths runs
in float32 whatever the storage or resident dtype (bf16 norms of 3584-wide rows lose ~3 digits),
chunk by chunk so a 152k × 3584 table never needs a second full-size float32 copy on the GPU.
"""

from __future__ import annotations

import hashlib

import torch

from reward_server.embeddings.errors import TableLoadError

_CHUNK_ELEMENTS = 1 << 24  # 64 MiB of float32 scratch per step


def content_hash(raw: torch.Tensor) -> str:
    """sha256 (first 16 hex digits) of the tensor's bytes exactly as stored on disk.

    Taken before any cast or device move, so the same checkpoint hashes the same on CPU and GPU.
    """
    data = raw.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
    return hashlib.sha256(memoryview(data.numpy())).hexdigest()[:16]


def normalise_rows(
    raw: torch.Tensor, *, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (unit-norm rows in `dtype` on `device`, bool mask of all-zero rows).

    All-zero rows (unused or padding ids) stay all-zero, so their cosine with anything is 0 rather
    than NaN. Non-finite values are refused: every score the service returns must be finite.
    """
    if raw.ndim != 2:
        raise TableLoadError(f"the embedding tensor must be 2-D (vocab, dim), got shape {tuple(raw.shape)}")
    source = raw.to(device)
    weight = torch.empty(source.shape, dtype=dtype, device=device)
    zero_rows = torch.empty(source.shape[0], dtype=torch.bool, device=device)
    non_finite = torch.zeros((), dtype=torch.int64, device=device)
    step = max(1, _CHUNK_ELEMENTS // max(1, source.shape[1]))
    tiny = torch.finfo(torch.float32).tiny
    for start in range(0, source.shape[0], step):
        target = weight[start : start + step]
        if dtype == torch.float32:  # cast straight into the table: no float32 scratch copy
            target.copy_(source[start : start + step])
            rows = target
        else:
            rows = source[start : start + step].to(torch.float32)
        norms = torch.linalg.vector_norm(rows, dim=1, keepdim=True)
        non_finite += (~torch.isfinite(norms)).sum()  # a NaN/inf anywhere in a row makes its norm non-finite
        zero_rows[start : start + step] = norms.squeeze(1) == 0
        if rows is target:
            target.div_(norms.clamp_min(tiny))
        else:  # never in place: `rows` may be a view of the caller's tensor
            target.copy_(rows / norms.clamp_min(tiny))
    bad = int(non_finite)
    if bad:
        raise TableLoadError(f"the embedding table has {bad} rows with NaN or infinite values")
    return weight, zero_rows
