"""EmbeddingTable behaviour: dtype/device choice, zero rows, tokenizer set-up, info()."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from checkpoints import (
    build_bert_checkpoint,
    build_decoder_checkpoint,
    build_qwen2_5_vl_checkpoint,
    expected_rows,
    isolate_location_cache,
    token_text,
)

from reward_server.embeddings import default_checkpoint_dir, load_table


@pytest.fixture(autouse=True)
def _isolated_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate_location_cache(monkeypatch, tmp_path)


def test_cpu_defaults_to_float32_and_bfloat16_can_be_asked_for(tmp_path: Path) -> None:
    ckpt = build_qwen2_5_vl_checkpoint(tmp_path / "q")  # stored in bf16
    f32 = load_table(ckpt.path, device="cpu")
    bf16 = load_table(ckpt.path, device="cpu", dtype="bfloat16")
    assert (f32.dtype, bf16.dtype) == (torch.float32, torch.bfloat16)
    assert bf16.device == torch.device("cpu")
    assert (bf16.weight.float().norm(dim=1) - 1).abs().max().item() < 1e-2
    torch.testing.assert_close(bf16.weight, expected_rows(ckpt.embedding).to(torch.bfloat16))
    assert f32.content_hash == bf16.content_hash  # hash of the stored bytes, not of the resident copy


def test_float16_and_torch_dtype_are_accepted(tmp_path: Path) -> None:
    ckpt = build_bert_checkpoint(tmp_path / "b")
    assert load_table(ckpt.path, device="cpu", dtype="float16").dtype == torch.float16
    assert load_table(ckpt.path, device=torch.device("cpu"), dtype=torch.float32).dtype == torch.float32


def test_content_hash_is_sha256_of_stored_bytes(tmp_path: Path) -> None:
    ckpt = build_qwen2_5_vl_checkpoint(tmp_path / "q")
    stored = ckpt.embedding.contiguous().view(torch.uint8).numpy().tobytes()
    assert load_table(ckpt.path, device="cpu").content_hash == hashlib.sha256(stored).hexdigest()[:16]
    other = build_qwen2_5_vl_checkpoint(tmp_path / "q2", seed=1)
    assert (
        load_table(other.path, device="cpu").content_hash != load_table(ckpt.path, device="cpu").content_hash
    )


def test_zero_rows_stay_zero_and_are_flagged(tmp_path: Path) -> None:
    ckpt = build_decoder_checkpoint(tmp_path / "d", zero_rows=(0, 7))
    table = load_table(ckpt.path, device="cpu")
    assert table.zero_rows.dtype == torch.bool
    assert table.zero_rows.nonzero().flatten().tolist() == [0, 7]
    assert torch.count_nonzero(table.weight[[0, 7]]) == 0
    assert torch.isfinite(table.weight).all()
    assert (table.weight[table.weight.norm(dim=1) > 0].norm(dim=1) - 1).abs().max().item() < 1e-5


def test_tokenizer_has_no_truncation_padding_or_special_tokens(tmp_path: Path) -> None:
    ckpt = build_decoder_checkpoint(
        tmp_path / "d", vocab=400
    )  # its tokenizer.json truncates at 8, pads to 16
    table = load_table(ckpt.path, device="cpu")
    ids = list(range(10, 60))
    encoded = table.encode([" ".join(token_text(i) for i in ids), token_text(5)])
    assert encoded == [ids, [5]]
    assert table.tokenizer.truncation is None and table.tokenizer.padding is None


def test_transformers_tokenizer_fallback_without_tokenizer_json(tmp_path: Path) -> None:
    ckpt = build_bert_checkpoint(tmp_path / "b", vocab=30522, dim=8)
    (ckpt.path / "tokenizer.json").unlink()
    shutil.copy(default_checkpoint_dir() / "vocab.txt", ckpt.path / "vocab.txt")
    table = load_table(ckpt.path, device="cpu")
    assert table.encode(["a dog"]) == [[1037, 3899]]
    assert table.tokenizer.truncation is None and table.tokenizer.padding is None


def test_info_is_json_friendly(tmp_path: Path) -> None:
    ckpt = build_qwen2_5_vl_checkpoint(tmp_path / "q", vocab=512, dim=32)
    info = load_table(ckpt.path, device="cpu").info()
    assert json.loads(json.dumps(info)) == info
    assert info == {
        "source": str(ckpt.path.resolve()),
        "tensor_key": ckpt.tensor_key,
        "content_hash": info["content_hash"],
        "model_type": "qwen2_5_vl",
        "vocab_size": 512,
        "dim": 32,
        "device": "cpu",
        "dtype": "float32",
    }
    assert len(info["content_hash"]) == 16


def test_table_is_immutable_and_compares_by_identity(tmp_path: Path) -> None:
    table = load_table(build_bert_checkpoint(tmp_path / "b").path, device="cpu")
    with pytest.raises(dataclasses.FrozenInstanceError):
        table.source = "elsewhere"  # type: ignore[misc]
    assert len({table, table}) == 1  # hashable, by identity
    assert table != load_table(table.source, device="cpu")
    assert "tensor(" not in repr(table)  # no megabytes of numbers in logs


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_defaults_to_bfloat16_with_the_same_hash(tmp_path: Path) -> None:
    ckpt = build_qwen2_5_vl_checkpoint(tmp_path / "q")
    gpu = load_table(ckpt.path)
    cpu = load_table(ckpt.path, device="cpu")
    assert (gpu.device.type, gpu.dtype) == ("cuda", torch.bfloat16)
    assert gpu.content_hash == cpu.content_hash
    torch.testing.assert_close(gpu.weight.float().cpu(), cpu.weight, atol=1e-2, rtol=0)
