"""The input-embedding tensor is found from the model's structure, in every checkpoint layout,
and it is the only tensor read (from the only shard that holds it)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from checkpoints import (
    BuiltCheckpoint,
    build_bert_checkpoint,
    build_custom_code_checkpoint,
    build_decoder_checkpoint,
    build_qwen2_5_vl_checkpoint,
    expected_rows,
    isolate_location_cache,
)
from typing_extensions import Self

from reward_server.embeddings import files as files_module
from reward_server.embeddings import load_table, location_cache
from reward_server.embeddings import locate as locate_module


@pytest.fixture(autouse=True)
def _isolated_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate_location_cache(monkeypatch, tmp_path)


LAYOUTS: dict[str, Callable[[Path], BuiltCheckpoint]] = {
    "qwen2_5_vl-nested": lambda d: build_qwen2_5_vl_checkpoint(d, nested=True),
    "qwen2_5_vl-legacy": lambda d: build_qwen2_5_vl_checkpoint(d, nested=False),
    "qwen2_5_vl-padded-table": lambda d: build_qwen2_5_vl_checkpoint(d, vocab=512, tokenizer_vocab=400),
    "qwen2": lambda d: build_decoder_checkpoint(d, model_type="qwen2"),
    "llama-tied": lambda d: build_decoder_checkpoint(d, model_type="llama", tie_word_embeddings=True),
    "tied-head-only": lambda d: build_decoder_checkpoint(d, tie_word_embeddings=True, head_only=True),
    "bert": lambda d: build_bert_checkpoint(d),
    "bert-prefixed": lambda d: build_bert_checkpoint(d, prefix="bert."),
    "custom-code-heuristic": lambda d: build_custom_code_checkpoint(d),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_layout_loads_the_embedding_rows(layout: str, tmp_path: Path) -> None:
    ckpt = LAYOUTS[layout](tmp_path / layout)
    table = load_table(ckpt.path, device="cpu")
    assert table.tensor_key == ckpt.tensor_key
    assert table.vocab_size == ckpt.embedding.shape[0]
    torch.testing.assert_close(table.weight, expected_rows(ckpt.embedding), atol=1e-6, rtol=0)
    assert table.source == str(ckpt.path.resolve())


@pytest.mark.parametrize("prefix", ["", "bert."])
def test_bert_prefix_is_bridged_without_architectures(prefix: str, tmp_path: Path) -> None:
    ckpt = build_bert_checkpoint(tmp_path / "bert", prefix=prefix)
    config = json.loads((ckpt.path / "config.json").read_text())
    config["architectures"] = ["BertForMaskedLM"] if not prefix else ["BertModel"]  # the *other* layout
    (ckpt.path / "config.json").write_text(json.dumps(config))
    assert load_table(ckpt.path, device="cpu").tensor_key == ckpt.tensor_key


def test_model_types_are_reported(tmp_path: Path) -> None:
    assert (
        load_table(build_qwen2_5_vl_checkpoint(tmp_path / "q").path, device="cpu").model_type == "qwen2_5_vl"
    )
    assert (
        load_table(build_custom_code_checkpoint(tmp_path / "c").path, device="cpu").model_type
        == "internvl_chat"
    )


class _RecordingHandle:
    """Stands in for a safetensors handle and records every tensor read through it."""

    def __init__(self, handle: Any, reads: list[tuple[str, str]], file: str) -> None:
        self._handle, self._reads, self._file = handle, reads, file

    def __enter__(self) -> Self:
        self._handle.__enter__()
        return self

    def __exit__(self, *exc: object) -> Any:
        return self._handle.__exit__(*exc)

    def get_tensor(self, key: str) -> torch.Tensor:
        self._reads.append((Path(self._file).name, key))
        return self._handle.get_tensor(key)

    def get_slice(self, key: str) -> Any:
        self._reads.append((Path(self._file).name, key))
        return self._handle.get_slice(key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)


@pytest.fixture
def tensor_reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    reads: list[tuple[str, str]] = []
    real = files_module.safe_open

    def recording_safe_open(filename: str, framework: str, device: str = "cpu") -> _RecordingHandle:
        return _RecordingHandle(real(filename, framework=framework, device=device), reads, filename)

    monkeypatch.setattr(files_module, "safe_open", recording_safe_open)
    return reads


@pytest.mark.parametrize("nested", [True, False])
def test_only_the_embedding_is_read_from_one_shard(nested: bool, tmp_path: Path, tensor_reads: list) -> None:
    ckpt = build_qwen2_5_vl_checkpoint(tmp_path / "q", nested=nested)
    load_table(ckpt.path, device="cpu")
    assert tensor_reads == [("model-00002-of-00003.safetensors", ckpt.tensor_key)]


def test_other_shards_are_never_opened(tmp_path: Path) -> None:
    ckpt = build_qwen2_5_vl_checkpoint(tmp_path / "q", nested=True)
    (ckpt.path / "model-00001-of-00003.safetensors").unlink()
    (ckpt.path / "model-00003-of-00003.safetensors").unlink()
    table = load_table(ckpt.path, device="cpu")
    torch.testing.assert_close(table.weight, expected_rows(ckpt.embedding), atol=1e-6, rtol=0)


def test_the_model_is_only_built_on_the_meta_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[torch.nn.Module] = []
    real = locate_module.build_meta_model

    def spy(config: Any) -> torch.nn.Module | None:
        model = real(config)
        if model is not None:
            built.append(model)
        return model

    monkeypatch.setattr(locate_module, "build_meta_model", spy)
    load_table(build_qwen2_5_vl_checkpoint(tmp_path / "q").path, device="cpu")
    (model,) = built
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    tensors = list(model.parameters()) + list(model.buffers())
    assert tensors and all(t.is_meta for t in tensors)


def test_location_is_cached_on_disk_across_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = build_qwen2_5_vl_checkpoint(tmp_path / "q")
    first = load_table(ckpt.path, device="cpu")
    location_cache.forget()  # as if a new process started

    def must_not_build(config: Any) -> None:
        raise AssertionError("the structural lookup ran despite a cached answer")

    monkeypatch.setattr(locate_module, "build_meta_model", must_not_build)
    second = load_table(ckpt.path, device="cpu")
    assert (second.tensor_key, second.model_type) == (first.tensor_key, first.model_type)

    config = json.loads((ckpt.path / "config.json").read_text())
    config["text_config"]["rms_norm_eps"] = 1e-5  # a different config is a different cache entry
    (ckpt.path / "config.json").write_text(json.dumps(config))
    with pytest.raises(AssertionError, match="structural lookup ran"):
        load_table(ckpt.path, device="cpu")


def test_disabled_disk_cache_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(location_cache.CACHE_ENV, "")
    assert location_cache.cache_dir() is None
    load_table(build_bert_checkpoint(tmp_path / "b").path, device="cpu")
    assert not (tmp_path / "location-cache").exists()
