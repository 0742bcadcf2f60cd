"""Which device and dtype a table lives in: bf16 on GPU (half the memory, tensor cores), float32 on CPU
(CPU bf16 matmuls are slow and lose precision for nothing)."""

from __future__ import annotations

import torch

from reward_server.embeddings.errors import TableLoadError

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`None` → CUDA when available, else CPU. Asking for an absent CUDA device is an error, not a fallback."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise TableLoadError(f"invalid device {device!r}: {exc}") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise TableLoadError(f"device {device!r} requested but CUDA is not available")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise TableLoadError(f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """`None` → bfloat16 on CUDA, float32 elsewhere; accepts "float32"/"bfloat16"/"float16" and short forms."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype in _DTYPES.values():
            return dtype
    elif dtype.lower().removeprefix("torch.") in _DTYPES:
        return _DTYPES[dtype.lower().removeprefix("torch.")]
    raise TableLoadError(f"unsupported table dtype {dtype!r}; use float32, bfloat16 or float16")
