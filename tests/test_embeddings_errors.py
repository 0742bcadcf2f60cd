"""Every way a checkpoint can be unusable ends in a TableLoadError that says what is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from checkpoints import (
    build_bert_checkpoint,
    build_custom_code_checkpoint,
    build_decoder_checkpoint,
    build_qwen2_5_vl_checkpoint,
    isolate_location_cache,
    write_safetensors,
)

from reward_server.embeddings import TableLoadError, load_table


@pytest.fixture(autouse=True)
def _isolated_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate_location_cache(monkeypatch, tmp_path)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(TableLoadError, match="does not exist"):
        load_table(tmp_path / "nope", device="cpu")


def test_path_is_a_file(tmp_path: Path) -> None:
    ckpt = build_bert_checkpoint(tmp_path / "b")
    with pytest.raises(TableLoadError, match="is a file"):
        load_table(ckpt.path / "model.safetensors", device="cpu")


def test_no_config_json(tmp_path: Path) -> None:
    ckpt = build_bert_checkpoint(tmp_path / "b")
    (ckpt.path / "config.json").unlink()
    with pytest.raises(TableLoadError, match="no config.json"):
        load_table(ckpt.path, device="cpu")


def test_no_safetensors(tmp_path: Path) -> None:
    ckpt = build_bert_checkpoint(tmp_path / "b")
    (ckpt.path / "model.safetensors").unlink()
    (ckpt.path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(TableLoadError, match=r"no \*\.safetensors weights .*pytorch_model\.bin"):
        load_table(ckpt.path, device="cpu")


def test_tokenizer_larger_than_table(tmp_path: Path) -> None:
    ckpt = build_decoder_checkpoint(tmp_path / "d", vocab=300, tokenizer_vocab=301)
    with pytest.raises(TableLoadError, match=r"vocab mismatch.*ids up to 300.*only 300 rows"):
        load_table(ckpt.path, device="cpu")


def test_no_tokenizer(tmp_path: Path) -> None:
    ckpt = build_bert_checkpoint(tmp_path / "b")
    (ckpt.path / "tokenizer.json").unlink()
    with pytest.raises(TableLoadError, match="has no tokenizer"):
        load_table(ckpt.path, device="cpu")


def test_embedding_tensor_not_found_lists_candidates(tmp_path: Path) -> None:
    ckpt = build_bert_checkpoint(tmp_path / "b")
    (ckpt.path / "model.safetensors").unlink()
    write_safetensors(
        ckpt.path, [{"encoder.tok_embed.w": ckpt.embedding, "pooler.dense.weight": torch.ones(2, 2)}]
    )
    with pytest.raises(
        TableLoadError, match=r"cannot find the input-embedding tensor.*candidates: encoder\.tok_embed"
    ):
        load_table(ckpt.path, device="cpu")


def test_ambiguous_suffix_match_lists_both(tmp_path: Path) -> None:
    ckpt = build_decoder_checkpoint(tmp_path / "d")
    (ckpt.path / "model.safetensors").unlink()
    write_safetensors(
        ckpt.path,
        [{"a.embed_tokens.weight": ckpt.embedding, "b.embed_tokens.weight": ckpt.embedding.clone()}],
    )
    with pytest.raises(
        TableLoadError, match=r"several checkpoint keys.*a\.embed_tokens\.weight, b\.embed_tokens"
    ):
        load_table(ckpt.path, device="cpu")


def test_ambiguous_heuristic_for_custom_code(tmp_path: Path) -> None:
    ckpt = build_custom_code_checkpoint(tmp_path / "c", decoy=True)
    with pytest.raises(TableLoadError, match=r"custom code is never run.*several tensors.*embed_tokens_copy"):
        load_table(ckpt.path, device="cpu")


def test_missing_shard(tmp_path: Path) -> None:
    ckpt = build_qwen2_5_vl_checkpoint(tmp_path / "q")
    (ckpt.path / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(TableLoadError, match=r"model-00002-of-00003\.safetensors, which is missing"):
        load_table(ckpt.path, device="cpu")


def test_broken_index(tmp_path: Path) -> None:
    ckpt = build_qwen2_5_vl_checkpoint(tmp_path / "q")
    (ckpt.path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}}))
    with pytest.raises(TableLoadError, match="weight_map"):
        load_table(ckpt.path, device="cpu")


def test_non_finite_rows_are_refused(tmp_path: Path) -> None:
    ckpt = build_bert_checkpoint(tmp_path / "b")
    broken = ckpt.embedding.clone()
    broken[7, 3] = float("nan")
    write_safetensors(ckpt.path, [{ckpt.tensor_key: broken}])
    with pytest.raises(TableLoadError, match="1 rows with NaN or infinite"):
        load_table(ckpt.path, device="cpu")


def test_unknown_dtype(tmp_path: Path) -> None:
    with pytest.raises(TableLoadError, match="unsupported table dtype 'int8'"):
        load_table(build_bert_checkpoint(tmp_path / "b").path, device="cpu", dtype="int8")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_cuda(tmp_path: Path) -> None:
    with pytest.raises(TableLoadError, match="CUDA is not available"):
        load_table(build_bert_checkpoint(tmp_path / "b").path, device="cuda")
