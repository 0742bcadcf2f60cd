"""Tokenization stage: answer spans to token ids, with ground truths cached across batches.

Ground truths repeat (every response of a GRPO group shares one, and the same prompts come back
every epoch), so their ids and the kernel's per-truth state (distinct ids and counts, host memory)
are cached; responses never repeat, so they are tokenized every time in one ``encode_batch`` call,
which the Rust tokenizer runs on all cores without holding the GIL.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from itertools import chain

import numpy as np

from reward_server.embeddings.table import EmbeddingTable
from reward_server.engine.bmas import TruthState, prepare_truth


def encode_flat(table: EmbeddingTable, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Tokenize ``texts`` at once; returns all ids concatenated (int64) and each text's length."""
    if not texts:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    tokenizer = table.tokenizer
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    id_lists = [enc.ids for enc in encode(list(texts), add_special_tokens=False)]
    lengths = np.fromiter(map(len, id_lists), dtype=np.int64, count=len(id_lists))
    flat = np.fromiter(chain.from_iterable(id_lists), dtype=np.int64, count=int(lengths.sum()))
    return flat, lengths


class _Entry:
    __slots__ = ("cost", "ids", "state")

    def __init__(self, text: str, ids: np.ndarray) -> None:
        self.ids = ids
        self.state: TruthState | None = None
        # The key text (up to 4 bytes a character), the ids, and the state's distinct ids and
        # counts (at most as many as the ids each): an upper bound, fixed at insertion.
        self.cost = 4 * len(text) + 3 * ids.nbytes


class TruthTokenCache:
    """LRU cache of ground-truth text -> token ids and kernel state (host memory), for one table.

    Two bounds: ``max_entries`` texts, and ``max_bytes`` for the texts, their ids and states (a
    truth may be 200,000 characters long, so a count alone bounds nothing). The least recently
    used go first. ``bytes`` is a running total, so a lookup costs the same with a full cache.
    Nothing here lives on the device: the kernel ships a batch's truth columns with the batch.
    """

    def __init__(self, table: EmbeddingTable, max_entries: int = 65536, max_bytes: int = 256 << 20) -> None:
        self._table = table
        self._max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def _lookup(self, texts: Sequence[str]) -> list[_Entry]:
        missing = list(dict.fromkeys(t for t in texts if t not in self._entries))
        self.misses += len(missing)
        self.hits += len(texts) - len(missing)
        fresh: dict[str, _Entry] = {}
        if missing:
            flat, lengths = encode_flat(self._table, missing)
            for text, ids in zip(missing, np.split(flat, np.cumsum(lengths)[:-1])):
                fresh[text] = self._entries[text] = _Entry(text, ids)
                self.bytes += fresh[text].cost
        result = []
        for text in texts:
            entry = self._entries.get(text) or fresh[text]
            if text in self._entries:
                self._entries.move_to_end(text)
            result.append(entry)
        while self._entries and (len(self._entries) > self._max_entries or self.bytes > self.max_bytes):
            self.bytes -= self._entries.popitem(last=False)[1].cost  # this call's entries live on in result
        return result

    def get_many(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Ids for each text, tokenizing every missing text in one batch call."""
        with self._lock:
            return [entry.ids for entry in self._lookup(texts)]

    def states(self, texts: Sequence[str]) -> list[TruthState]:
        """Kernel state (distinct ids and counts) for each text; built once per truth."""
        with self._lock:
            states = []
            for entry in self._lookup(texts):
                if entry.state is None:
                    entry.state = prepare_truth(entry.ids)
                states.append(entry.state)
            return states
