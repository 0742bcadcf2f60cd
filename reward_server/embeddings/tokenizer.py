"""The policy's own tokenizer, configured for BMAS.

BMAS compares every token of a response with every token of the ground truth, so the tokenizer
must not cut long answers (many `tokenizer.json` files, including the default's, ship with
truncation at 128 and fixed padding) and must not pad. Special tokens are left out at encode
time (`add_special_tokens=False`), not by editing the post-processor, so the object stays the
checkpoint's own tokenizer.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer

from reward_server.embeddings.errors import TableLoadError

# Files that carry a vocabulary. transformers 5 happily builds an *empty* tokenizer (special
# tokens only) from a directory without any of them, which would silently map every word to [UNK].
_VOCAB_FILES = ("vocab.txt", "vocab.json", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model")


def load_tokenizer(directory: Path) -> Tokenizer:
    """Load `tokenizer.json` (or a transformers fast tokenizer) with truncation and padding off."""
    path = directory / "tokenizer.json"
    tokenizer = _from_file(path) if path.is_file() else _from_transformers(directory)
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def max_token_id(tokenizer: Tokenizer) -> int:
    """Largest id the tokenizer can emit, added tokens included (ids need not be contiguous)."""
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    return max(vocab.values()) if vocab else -1


def _from_file(path: Path) -> Tokenizer:
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception on malformed JSON
        raise TableLoadError(f"cannot load tokenizer {path}: {exc}") from exc


def _from_transformers(directory: Path) -> Tokenizer:
    """Fallback for checkpoints without tokenizer.json (transformers may convert a sentencepiece model)."""
    from transformers import AutoTokenizer

    if not any((directory / name).is_file() for name in _VOCAB_FILES) and not any(
        directory.glob("*.tiktoken")
    ):
        raise TableLoadError(
            f"{directory} has no tokenizer (no tokenizer.json, nor any of {', '.join(_VOCAB_FILES)}); "
            "save the policy's tokenizer next to its weights (tokenizer.save_pretrained)"
        )
    try:
        wrapper = AutoTokenizer.from_pretrained(
            str(directory), local_files_only=True, trust_remote_code=False
        )
    except Exception as exc:
        raise TableLoadError(
            f"{directory} has no tokenizer.json and transformers cannot load a tokenizer from it ({exc}); "
            "save the policy's tokenizer next to its weights (tokenizer.save_pretrained)"
        ) from exc
    backend = getattr(wrapper, "backend_tokenizer", None)
    if not isinstance(backend, Tokenizer):
        raise TableLoadError(
            f"{directory}: {type(wrapper).__name__} is not a fast tokenizer; BMAS needs a `tokenizers` backend "
            "(save tokenizer.json with a fast tokenizer)"
        )
    return backend
