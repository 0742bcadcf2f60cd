"""Checkpoint discovery and embedding-table loading for BMAS.

Public surface: `load_table` builds an `EmbeddingTable` (tokenizer + unit-norm input-embedding
rows) from any local Hugging Face checkpoint or the embedded default; `TableLoadError` is the one
error to catch. Modules underneath: `files` (safetensors index/headers), `locate` (which tensor is
the input table), `tokenizer`, `rows` (normalisation, hash), `placement` (device/dtype), `default`.
"""

from reward_server.embeddings.default import DEFAULT_SOURCE, default_checkpoint_dir
from reward_server.embeddings.errors import DefaultTableMissing, TableLoadError
from reward_server.embeddings.loader import load_table
from reward_server.embeddings.table import EmbeddingTable

__all__ = [
    "DEFAULT_SOURCE",
    "DefaultTableMissing",
    "EmbeddingTable",
    "TableLoadError",
    "default_checkpoint_dir",
    "load_table",
]
