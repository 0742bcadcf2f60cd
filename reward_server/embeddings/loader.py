"""`load_table`: checkpoint directory (or the embedded default) → `EmbeddingTable`.

Cheap checks run first (directory, config, safetensors files, tokenizer), so a wrong path fails
in milliseconds; then the embedding key is located from the model's structure, and exactly one
tensor is read from exactly one shard.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch

from reward_server.embeddings.default import DEFAULT_SOURCE, default_checkpoint_dir
from reward_server.embeddings.errors import DefaultTableMissing, TableLoadError
from reward_server.embeddings.files import scan_checkpoint
from reward_server.embeddings.locate import locate_embedding, read_raw_config
from reward_server.embeddings.placement import resolve_device, resolve_dtype
from reward_server.embeddings.rows import content_hash, normalise_rows
from reward_server.embeddings.table import EmbeddingTable
from reward_server.embeddings.tokenizer import load_tokenizer, max_token_id

__all__ = ["DefaultTableMissing", "TableLoadError", "load_table"]

log = logging.getLogger(__name__)


def load_table(
    path: str | os.PathLike[str] | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> EmbeddingTable:
    """Load the tokenizer and the L2-normalised input-embedding table of a local checkpoint.

    `path=None` loads the embedded default (all-MiniLM-L6-v2). `device=None` picks CUDA when
    available; `dtype=None` picks bfloat16 on CUDA and float32 on CPU. Raises `TableLoadError`
    (with what to fix) for anything wrong with the checkpoint; nothing is ever downloaded.
    """
    started = time.perf_counter()
    target_device = resolve_device(device)
    target_dtype = resolve_dtype(dtype, target_device)
    directory, source = _resolve_source(path)

    read_raw_config(directory)  # fail fast on a missing/broken config.json
    files = scan_checkpoint(directory)
    tokenizer = load_tokenizer(directory)
    located = locate_embedding(directory, files)

    header = files.header(located.key)
    if len(header.shape) != 2:
        raise TableLoadError(
            f"{located.key} in {directory} has shape {list(header.shape)}, expected (vocab, dim)"
        )
    rows = header.shape[0]
    highest = max_token_id(tokenizer)
    if highest >= rows:
        raise TableLoadError(
            f"vocab mismatch in {directory}: the tokenizer can emit ids up to {highest} "
            f"({highest + 1} tokens) but the embedding table {located.key} has only {rows} rows; "
            "the tokenizer and weights come from different models"
        )
    if 2 * (highest + 1) < rows:  # legal (padded tables) but a mismatched tokenizer looks like this too
        log.warning("tokenizer of %s covers only %d of the table's %d rows", directory, highest + 1, rows)

    raw = files.read_tensor(located.key)
    digest = content_hash(raw)
    weight, zero_rows = normalise_rows(raw, device=target_device, dtype=target_dtype)
    table = EmbeddingTable(
        weight=weight,
        tokenizer=tokenizer,
        source=source,
        tensor_key=located.key,
        content_hash=digest,
        model_type=located.model_type,
        zero_rows=zero_rows,
    )
    log.info("loaded embedding table %s in %.2fs", table.info(), time.perf_counter() - started)
    return table


def _resolve_source(path: str | os.PathLike[str] | None) -> tuple[Path, str]:
    if path is None:
        return default_checkpoint_dir(), DEFAULT_SOURCE
    directory = Path(path).expanduser().resolve()
    if not directory.exists():
        raise TableLoadError(f"checkpoint directory {directory} does not exist")
    if not directory.is_dir():
        raise TableLoadError(f"{directory} is a file; pass the checkpoint directory that contains it")
    return directory, str(directory)
