"""The loaded embedding table: what BMAS needs from the policy, and nothing else.

The service holds the policy's tokenizer and only its input-embedding matrix, so a 7B policy
costs ~1 GB of device memory here instead of ~15 GB. The object is immutable: a hot swap builds
a new table and replaces the reference, so a request in flight keeps scoring with the table it
started with, and its response can name that table (`source`, `content_hash`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from tokenizers import Tokenizer


@dataclass(frozen=True, eq=False)
class EmbeddingTable:
    """Unit-norm input-embedding rows plus the tokenizer that indexes them.

    `weight` rows were L2-normalised once at load (float32 maths, then cast); rows listed in
    `zero_rows` were all-zero on disk and stay all-zero, so their cosines are 0. The tokenizer has
    truncation and padding disabled. `eq=False`: tables compare by identity (tensor equality is
    not a bool); compare `content_hash` to ask "same weights?".
    """

    weight: torch.Tensor = field(repr=False)
    tokenizer: Tokenizer = field(repr=False)
    source: str
    tensor_key: str
    content_hash: str
    model_type: str
    zero_rows: torch.Tensor = field(repr=False)

    @property
    def vocab_size(self) -> int:
        """Rows in the table (may exceed the tokenizer's vocabulary: e.g. Qwen pads to 152064)."""
        return int(self.weight.shape[0])

    @property
    def dim(self) -> int:
        """Embedding width."""
        return int(self.weight.shape[1])

    @property
    def device(self) -> torch.device:
        """Where the rows live."""
        return self.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """Resident dtype of the rows (float32 on CPU, bfloat16 on CUDA by default)."""
        return self.weight.dtype

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, without special tokens (BMAS compares content tokens only)."""
        return [
            encoding.ids for encoding in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        ]

    def info(self) -> dict[str, Any]:
        """JSON-friendly description for `/v1/info`, metrics labels and per-response provenance."""
        return {
            "source": self.source,
            "tensor_key": self.tensor_key,
            "content_hash": self.content_hash,
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "dim": self.dim,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
        }
