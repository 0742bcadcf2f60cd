"""Inverse document frequencies for the robust profile's token weights (SPEC §6b).

BERTScore weighs tokens by idf so that a match on a rare, content-bearing word counts more than a
match on ``the`` or ``.``. The idf must be fixed before training (an online estimate would make an
item's reward depend on what the server saw before), so the user builds it once from the training
set's ground truths with ``reward-server idf DATASET -o FILE`` and passes it with ``--idf-path``.

    idf(t) = ln((N + 1) / (df(t) + 1)),  weight(t) = max(idf(t), WEIGHT_FLOOR)

``N`` is the number of distinct ground truths, ``df(t)`` how many contain token ``t``; a token
never seen gets the largest weight, ``ln(N + 1)``. The floor keeps a truth made only of the
commonest tokens (``"a dog."`` in a corpus where every caption has them) scoreable. Without an idf
file every token weighs 1 (still distinct tokens and the F-measure).

File: JSON, ``{"format": "mixed-reward-idf", "version": 1, "documents": N, "df": {"id": count},
"tokenizer": {"hash", "source"}}``. Ids depend on the tokenizer, so a file built
with another tokenizer is refused at load (checkpoints of one policy share a tokenizer, so an
updated table keeps its idf file).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from reward_server.errors import InvalidTable

FORMAT = "mixed-reward-idf"
VERSION = 1
WEIGHT_FLOOR = 0.01
ENCODE_CHUNK = 1024


class IdfFileError(InvalidTable):
    """The idf file is missing, unreadable, malformed, or was built for another tokenizer."""

    def __init__(self, path: str | os.PathLike[str], message: str) -> None:
        super().__init__(f"idf file {os.fspath(path)}: {message}")
        self.path = os.fspath(path)


def tokenizer_hash(tokenizer: Tokenizer) -> str:
    """A fingerprint of the tokenizer's vocabulary (token -> id, added tokens included)."""
    vocab = sorted(tokenizer.get_vocab(with_added_tokens=True).items())
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class IdfTable:
    """Document frequencies of token ids over ``documents`` distinct ground truths."""

    documents: int
    df: dict[int, int]
    tokenizer_hash: str
    tokenizer_source: str = ""
    content_hash: str = ""  # of the file it was read from (part of an offline run's fingerprint)

    def weights(self, rows: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """(rows,) float32 token weights on ``device``."""
        unseen = math.log(self.documents + 1.0)
        weights = torch.full((rows,), max(unseen, WEIGHT_FLOOR), dtype=torch.float64)
        if self.df:
            ids = torch.tensor(list(self.df), dtype=torch.int64)
            counts = torch.tensor(list(self.df.values()), dtype=torch.float64)
            weights[ids] = torch.log((self.documents + 1.0) / (counts + 1.0)).clamp(min=WEIGHT_FLOOR)
        return weights.float().to(device)

    def info(self) -> dict[str, Any]:
        return {
            "documents": self.documents,
            "tokens": len(self.df),
            "tokenizer_hash": self.tokenizer_hash,
            "content_hash": self.content_hash,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "documents": self.documents,
            "tokenizer": {"hash": self.tokenizer_hash, "source": self.tokenizer_source},
            "df": {str(k): v for k, v in sorted(self.df.items())},
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically (a half-written file would be refused at load, but why leave one)."""
        target = Path(path)
        partial = target.with_name(target.name + ".partial")
        partial.write_text(json.dumps(self.to_json(), separators=(",", ":")) + "\n", encoding="utf-8")
        os.replace(partial, target)


def count_documents(
    texts: Iterable[str], tokenizer: Tokenizer, on_chunk: Any = None
) -> tuple[int, dict[int, int]]:
    """Number of distinct texts and, per token id, how many of them contain it.

    ``texts`` are answer spans; duplicates (every response row of a GRPO group repeats its truth)
    count once, so a prompt file and a rollout file of the same prompts give the same idf.
    ``on_chunk(n)`` is called after each chunk of ``n`` texts is tokenized (a progress bar).
    """
    seen: set[bytes] = set()
    df: dict[int, int] = {}
    chunk: list[str] = []

    def flush() -> None:
        for encoding in tokenizer.encode_batch(chunk, add_special_tokens=False):
            for token in set(encoding.ids):
                df[token] = df.get(token, 0) + 1
        if on_chunk is not None:
            on_chunk(len(chunk))
        chunk.clear()

    for text in texts:
        key = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        if key in seen:
            continue
        seen.add(key)
        chunk.append(text)
        if len(chunk) >= ENCODE_CHUNK:
            flush()
    if chunk:
        flush()
    return len(seen), df


def load_idf(path: str | os.PathLike[str], tokenizer: Tokenizer | None = None, rows: int | None = None) -> IdfTable:
    """Read and check an idf file; with ``tokenizer``/``rows``, check it fits the served table."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise IdfFileError(path, "no such file (build one with `reward-server idf DATASET -o FILE`)") from None
    except OSError as exc:
        raise IdfFileError(path, f"cannot read it: {exc.strerror or exc}") from exc
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise IdfFileError(path, f"not valid JSON ({exc}); rebuild it with `reward-server idf`") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise IdfFileError(path, f"not a {FORMAT} file (no \"format\": \"{FORMAT}\")")
    if data.get("version") != VERSION:
        raise IdfFileError(path, f"version {data.get('version')!r} is not supported (this server reads {VERSION})")
    documents = data.get("documents")
    df_raw = data.get("df")
    meta = data.get("tokenizer")
    if not isinstance(documents, int) or isinstance(documents, bool) or documents < 1:
        raise IdfFileError(path, "\"documents\" must be a positive integer")
    if not isinstance(df_raw, dict) or not isinstance(meta, dict) or not isinstance(meta.get("hash"), str):
        raise IdfFileError(path, "needs a \"df\" object and a \"tokenizer\" object with a \"hash\"")
    df: dict[int, int] = {}
    for key, count in df_raw.items():
        if not (isinstance(key, str) and key.isdigit()) or not isinstance(count, int) or not 0 < count <= documents:
            raise IdfFileError(path, f"bad df entry {key!r}: {count!r} (token id -> count in 1..{documents})")
        df[int(key)] = count
    table = IdfTable(
        documents=documents,
        df=df,
        tokenizer_hash=meta["hash"],
        tokenizer_source=str(meta.get("source", "")),
        content_hash=hashlib.sha256(raw).hexdigest()[:16],
    )
    check_fits(table, path, tokenizer, rows)
    return table


def check_fits(
    table: IdfTable, path: str | os.PathLike[str], tokenizer: Tokenizer | None = None, rows: int | None = None
) -> None:
    """Refuse an idf built with another tokenizer, or naming ids beyond the table's rows."""
    if tokenizer is not None and tokenizer_hash(tokenizer) != table.tokenizer_hash:
        raise IdfFileError(
            path,
            f"built with another tokenizer ({table.tokenizer_source or table.tokenizer_hash}); "
            "rebuild it with `reward-server idf --model-path` of the served model",
        )
    if rows is not None and table.df and max(table.df) >= rows:
        raise IdfFileError(path, f"token id {max(table.df)} is outside the table's {rows} rows")


__all__ = [
    "WEIGHT_FLOOR",
    "IdfFileError",
    "IdfTable",
    "check_fits",
    "count_documents",
    "load_idf",
    "tokenizer_hash",
]
