"""The Qwen2.5-VL layout that bench/qwen_checkpoint.py builds loads through the normal path.

A small version of the bench's full-size checkpoint: the real Qwen2.5 tokenizer (rebuilt from
``qwen.tiktoken``), a Qwen2.5-VL config, the full 152,064-row table at a tiny width, 4 shards with
an index and an ``lm_head`` decoy of the same shape. The loader must pick the input embedding by
its key, normalise exactly those rows, and the tokenizer must round-trip text and special tokens.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from reward_server.embeddings.loader import load_table

_SPEC = importlib.util.spec_from_file_location(
    "qwen_checkpoint", Path(__file__).resolve().parents[1] / "bench" / "qwen_checkpoint.py"
)
qwen_checkpoint = importlib.util.module_from_spec(_SPEC)
sys.modules["qwen_checkpoint"] = qwen_checkpoint
_SPEC.loader.exec_module(qwen_checkpoint)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return qwen_checkpoint.build_qwen_checkpoint(tmp_path_factory.mktemp("qwen25vl"), dim=16)


def test_sharded_with_index_and_the_embedding_key_found(checkpoint: Path) -> None:
    index = json.loads((checkpoint / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) == 4 and all((checkpoint / s).is_file() for s in shards)
    key = qwen_checkpoint.EMBED_KEY
    assert index["weight_map"][key] != index["weight_map"]["lm_head.weight"]

    table = load_table(checkpoint, device="cpu")
    assert table.tensor_key == key
    assert tuple(table.weight.shape) == (qwen_checkpoint.QWEN_TABLE_ROWS, 16)
    with safe_open(str(checkpoint / index["weight_map"][key]), framework="pt") as f:
        stored = f.get_tensor(key).float()
    expected = stored / stored.norm(dim=1, keepdim=True)
    torch.testing.assert_close(table.weight.float(), expected, atol=1e-6, rtol=0)


def test_tokenizer_is_qwen25_and_round_trips(checkpoint: Path) -> None:
    table = load_table(checkpoint, device="cpu")
    text = "The answer is 12.5 km² — 答案是十二 <|im_end|>"
    [ids] = table.encode([text])
    assert table.tokenizer.decode(ids, skip_special_tokens=False) == text
    assert ids[-1] == 151645  # <|im_end|>, a Qwen2.5 special token, kept whole
    [digits] = table.encode(["2024"])
    assert len(digits) == 4  # Qwen2 splits numbers digit by digit
    assert table.tokenizer.get_vocab_size() == 151665
    assert max(ids) < table.weight.shape[0]
