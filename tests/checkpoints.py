"""Builders of tiny, fake Hugging Face checkpoint directories for tests.

Each builder writes a real transformers `config.json` (tiny sizes), a real `tokenizer.json`
and safetensors weights laid out the way the real model family stores them, with a random but
known embedding table, and returns a `BuiltCheckpoint(path, embedding, tensor_key)`:

    ckpt = build_qwen2_5_vl_checkpoint(tmp_path / "qwen", vocab=512, dim=32, nested=True)
    table = load_table(ckpt.path, device="cpu")
    torch.testing.assert_close(table.weight, expected_rows(ckpt.embedding))

The tokenizer is a WordLevel model over the words `token_text(i)` = "w{i}" (ids 0-3 are
[PAD] [UNK] [CLS] [SEP]), so `" ".join(token_text(i) for i in ids)` encodes to exactly `ids`.
Like the default table's tokenizer.json it ships with truncation (max 8) and padding (to 16)
switched on and a [CLS] … [SEP] post-processor, so tests can check the loader disables them.

Only torch, safetensors, tokenizers and transformers' *config* classes are used; nothing is
downloaded and no model is instantiated.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers, processors

# Set before transformers is first imported: tests must never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")


class BuiltCheckpoint(NamedTuple):
    """A fake checkpoint: its directory, the embedding table as written, and the key it is stored under."""

    path: Path
    embedding: torch.Tensor
    tensor_key: str


def token_text(token_id: int) -> str:
    """The word that the builders' tokenizer maps to `token_id` (ids >= len(SPECIAL_TOKENS))."""
    return f"w{token_id}"


def build_tokenizer(vocab_size: int) -> Tokenizer:
    """A WordLevel tokenizer with ids 0..vocab_size-1, truncation/padding ON (as many real files ship)."""
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    vocab.update({token_text(i): i for i in range(len(SPECIAL_TOKENS), vocab_size)})
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tokenizer.enable_truncation(max_length=8)
    tokenizer.enable_padding(length=16, pad_id=0, pad_token="[PAD]")
    return tokenizer


def write_tokenizer(directory: Path, vocab_size: int) -> Path:
    """Save `build_tokenizer(vocab_size)` as `directory/tokenizer.json`."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "tokenizer.json"
    build_tokenizer(vocab_size).save(str(path))
    return path


def random_embedding(
    vocab: int, dim: int, *, seed: int = 0, dtype: torch.dtype = torch.float32, zero_rows: Sequence[int] = ()
) -> torch.Tensor:
    """A reproducible (vocab, dim) table; rows listed in `zero_rows` are all-zero."""
    generator = torch.Generator().manual_seed(seed)
    table = torch.randn(vocab, dim, generator=generator)
    table[list(zero_rows)] = 0.0
    return table.to(dtype)


def expected_rows(embedding: torch.Tensor) -> torch.Tensor:
    """What the loader should hold for `embedding` on CPU: float32 unit rows, zero rows left at zero."""
    rows = embedding.to(torch.float32)
    norms = rows.norm(dim=1, keepdim=True)
    return torch.where(norms > 0, rows / norms.clamp_min(1e-30), torch.zeros_like(rows))


def write_safetensors(directory: Path, shards: Sequence[Mapping[str, torch.Tensor]]) -> list[Path]:
    """Write one file per shard; with 2+ shards also `model.safetensors.index.json` (HF naming)."""
    directory.mkdir(parents=True, exist_ok=True)
    if len(shards) == 1:
        path = directory / "model.safetensors"
        save_file({k: v.contiguous() for k, v in shards[0].items()}, str(path), metadata={"format": "pt"})
        return [path]
    paths, weight_map, total = [], {}, 0
    for number, tensors in enumerate(shards, start=1):
        path = directory / f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"format": "pt"})
        paths.append(path)
        for key, tensor in tensors.items():
            weight_map[key] = path.name
            total += tensor.numel() * tensor.element_size()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return paths


def build_qwen2_5_vl_checkpoint(
    directory: Path,
    *,
    vocab: int = 512,
    dim: int = 32,
    nested: bool = True,
    tokenizer_vocab: int | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.bfloat16,
    zero_rows: Sequence[int] = (),
) -> BuiltCheckpoint:
    """A Qwen2.5-VL checkpoint in 3 shards with an index; the embedding sits alone-ish in shard 2.

    `nested=True` mimics newer saves (transformers >= 4.52: nested `text_config`, keys
    `model.language_model.*` / `model.visual.*`); `nested=False` mimics the original release
    (flat config, keys `model.embed_tokens.weight` / `visual.*`). A same-shape `lm_head.weight`
    decoy is included. `tokenizer_vocab` < `vocab` mimics Qwen's padded table (151665 → 152064).
    """
    embedding = random_embedding(vocab, dim, seed=seed, dtype=dtype, zero_rows=zero_rows)
    heads, vision_dim = 2, 16
    text = {
        "vocab_size": vocab,
        "hidden_size": dim,
        "intermediate_size": 2 * dim,
        "num_hidden_layers": 1,
        "num_attention_heads": heads,
        "num_key_value_heads": 1,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
        "rope_scaling": {"type": "mrope", "mrope_section": _mrope_section(dim // heads)},
    }
    vision = {
        "depth": 1,
        "hidden_size": vision_dim,
        "intermediate_size": 2 * vision_dim,
        "num_heads": 2,
        "out_hidden_size": dim,
        "fullatt_block_indexes": [0],
        "patch_size": 2,
        "temporal_patch_size": 2,
    }
    base = {"architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl"}
    if nested:
        config = {**base, "text_config": {**text, "model_type": "qwen2_5_vl_text"}, "vision_config": vision}
        lm, visual = "model.language_model.", "model.visual."
    else:
        config = {**base, **text, "vision_config": vision}
        lm, visual = "model.", "visual."
    config["torch_dtype"] = "bfloat16"
    _write_config(directory, config)
    write_tokenizer(directory, tokenizer_vocab or vocab)
    generator = torch.Generator().manual_seed(seed + 1)
    key = f"{lm}embed_tokens.weight"
    write_safetensors(
        directory,
        [
            {
                f"{visual}patch_embed.proj.weight": torch.randn(vision_dim, 3, 2, 2, 2, generator=generator),
                f"{visual}blocks.0.attn.qkv.weight": torch.randn(
                    3 * vision_dim, vision_dim, generator=generator
                ),
                f"{visual}merger.mlp.2.weight": torch.randn(dim, 4 * vision_dim, generator=generator),
            },
            {
                key: embedding,
                f"{lm}layers.0.self_attn.q_proj.weight": torch.randn(dim, dim, generator=generator).to(dtype),
            },
            {
                f"{lm}norm.weight": torch.ones(dim, dtype=dtype),
                "lm_head.weight": torch.randn(vocab, dim, generator=generator).to(dtype),
            },
        ],
    )
    return BuiltCheckpoint(directory, embedding, key)


def build_decoder_checkpoint(
    directory: Path,
    *,
    model_type: str = "qwen2",
    vocab: int = 400,
    dim: int = 32,
    tie_word_embeddings: bool = False,
    head_only: bool = False,
    tokenizer_vocab: int | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    zero_rows: Sequence[int] = (),
) -> BuiltCheckpoint:
    """A Qwen2- or Llama-style decoder (`model_type` "qwen2" | "llama") in a single model.safetensors.

    Keys `model.embed_tokens.weight`, `model.layers.0.*`, `model.norm.weight`, and `lm_head.weight`
    unless tied. `head_only=True` (needs `tie_word_embeddings=True`) stores the shared matrix only
    as `lm_head.weight`, as a few exporters do; the returned `tensor_key` is then "lm_head.weight".
    """
    from transformers import LlamaConfig, Qwen2Config

    config_class = {"qwen2": Qwen2Config, "llama": LlamaConfig}[model_type]
    architecture = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}[model_type]
    config = config_class(
        vocab_size=vocab,
        hidden_size=dim,
        intermediate_size=2 * dim,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=2,
        eos_token_id=3,
        pad_token_id=0,
        architectures=[architecture],
    )
    _write_config(directory, config.to_dict())
    write_tokenizer(directory, tokenizer_vocab or vocab)
    embedding = random_embedding(vocab, dim, seed=seed, dtype=dtype, zero_rows=zero_rows)
    generator = torch.Generator().manual_seed(seed + 1)
    key = "lm_head.weight" if head_only else "model.embed_tokens.weight"
    tensors = {
        key: embedding,
        "model.layers.0.self_attn.q_proj.weight": torch.randn(dim, dim, generator=generator).to(dtype),
        "model.norm.weight": torch.ones(dim, dtype=dtype),
    }
    if not tie_word_embeddings:
        tensors["lm_head.weight"] = torch.randn(vocab, dim, generator=generator).to(dtype)
    write_safetensors(directory, [tensors])
    return BuiltCheckpoint(directory, embedding, key)


def build_bert_checkpoint(
    directory: Path,
    *,
    vocab: int = 300,
    dim: int = 16,
    prefix: str = "",
    tokenizer_vocab: int | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    zero_rows: Sequence[int] = (),
) -> BuiltCheckpoint:
    """A BERT checkpoint: `prefix=""` is a `BertModel` save (like the default table), `prefix="bert."`
    a `BertForMaskedLM` save. Position/token-type embeddings are included as decoys."""
    from transformers import BertConfig

    config = BertConfig(
        vocab_size=vocab,
        hidden_size=dim,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=2 * dim,
        max_position_embeddings=64,
        architectures=["BertForMaskedLM" if prefix else "BertModel"],
    )
    _write_config(directory, config.to_dict())
    write_tokenizer(directory, tokenizer_vocab or vocab)
    embedding = random_embedding(vocab, dim, seed=seed, dtype=dtype, zero_rows=zero_rows)
    generator = torch.Generator().manual_seed(seed + 1)
    key = f"{prefix}embeddings.word_embeddings.weight"
    tensors = {
        key: embedding,
        f"{prefix}embeddings.position_embeddings.weight": torch.randn(64, dim, generator=generator).to(dtype),
        f"{prefix}embeddings.token_type_embeddings.weight": torch.randn(2, dim, generator=generator).to(
            dtype
        ),
        f"{prefix}embeddings.LayerNorm.weight": torch.ones(dim, dtype=dtype),
        f"{prefix}encoder.layer.0.attention.self.query.weight": torch.randn(dim, dim, generator=generator).to(
            dtype
        ),
    }
    if prefix:
        tensors["cls.predictions.bias"] = torch.zeros(vocab, dtype=dtype)
    write_safetensors(directory, [tensors])
    return BuiltCheckpoint(directory, embedding, key)


def build_custom_code_checkpoint(
    directory: Path,
    *,
    vocab: int = 384,
    dim: int = 32,
    decoy: bool = False,
    seed: int = 0,
    dtype: torch.dtype = torch.bfloat16,
) -> BuiltCheckpoint:
    """An original-InternVL-style checkpoint whose `model_type` ("internvl_chat") needs custom code.

    transformers cannot build it without `trust_remote_code`, so the loader must fall back to its
    structural heuristic. Vocab size lives in `llm_config`. `decoy=True` adds a second
    vocab-shaped tensor with "embed" in its name, making the heuristic ambiguous.
    """
    config = {
        "architectures": ["InternVLChatModel"],
        "model_type": "internvl_chat",
        "auto_map": {"AutoConfig": "configuration_internvl_chat.InternVLChatConfig"},
        "llm_config": {
            "architectures": ["Qwen2ForCausalLM"],
            "model_type": "qwen2",
            "vocab_size": vocab,
            "hidden_size": dim,
        },
        "vision_config": {"model_type": "intern_vit_6b", "hidden_size": 16, "image_size": 8, "patch_size": 4},
    }
    _write_config(directory, config)
    write_tokenizer(directory, vocab)
    embedding = random_embedding(vocab, dim, seed=seed, dtype=dtype)
    generator = torch.Generator().manual_seed(seed + 1)
    key = "language_model.model.embed_tokens.weight"
    tensors = {
        key: embedding,
        "language_model.lm_head.weight": torch.randn(vocab, dim, generator=generator).to(dtype),
        "vision_model.embeddings.patch_embedding.weight": torch.randn(16, 3, 4, 4, generator=generator).to(
            dtype
        ),
        "vision_model.embeddings.position_embedding": torch.randn(1, 5, 16, generator=generator).to(dtype),
        "mlp1.1.weight": torch.randn(dim, 64, generator=generator).to(dtype),
    }
    if decoy:
        tensors["language_model.model.embed_tokens_copy.weight"] = embedding.clone()
    write_safetensors(directory, [tensors])
    return BuiltCheckpoint(directory, embedding, key)


def isolate_location_cache(monkeypatch: pytest.MonkeyPatch, directory: Path) -> None:
    """Point the loader's embedding-location cache at `directory` and empty its memory.

    Use from an autouse fixture (`isolate_location_cache(monkeypatch, tmp_path)`) so tests neither
    read nor write `~/.cache/reward_server` and always exercise the structural lookup.
    """
    from reward_server.embeddings import location_cache

    monkeypatch.setenv(location_cache.CACHE_ENV, str(directory / "location-cache"))
    location_cache.forget()


def _write_config(directory: Path, config: dict[str, object]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))


def _mrope_section(head_dim: int) -> list[int]:
    """Split head_dim/2 rotary frequencies over (temporal, height, width) like Qwen2.5-VL's [16, 24, 24]."""
    half = head_dim // 2
    first = half // 4
    rest = half - first
    return [first, rest // 2, rest - rest // 2]
