"""Find which checkpoint tensor is the input-embedding table, from the model's own structure.

Hard-coding `model.embed_tokens.weight` breaks on the next architecture, so we ask transformers:
read `config.json` with `AutoConfig`, build the model on the *meta* device (no memory, no weights
read), call `get_input_embeddings()`, take that module's parameter name, and map it onto the keys
the checkpoint actually stores. The mapping tries, in order:

1. the exact name;
2. transformers' own checkpoint-key conversions (transformers 5 `conversion_mapping`, or the
   model's `_checkpoint_conversion_mapping` on 4.x), which is how an older Qwen2.5-VL save with
   `model.embed_tokens.weight` maps onto today's `model.language_model.embed_tokens.weight`;
3. the same name with the base-model prefix (`bert.`, `model.`) added or removed;
4. a unique suffix match on the module path (`embed_tokens.weight`, `word_embeddings.weight`);
5. for tied models whose checkpoint kept only the output head, the tied twin (`lm_head.weight`).

When transformers does not know the architecture (custom code such as the original InternVL
chat models, which we refuse to execute: `trust_remote_code=False`), a documented structural
heuristic over the safetensors headers is used instead: the unique 2-D tensor whose first dim is
the config's vocab size (top level, `text_config`, `llm_config` or `language_config`) and whose
name contains "embed" but not "lm_head", "position", "token_type" or "patch".

Answers are cached per (config, key list, transformers version) in memory and on disk (see
`location_cache`), so a warm start or a hot swap to a same-architecture checkpoint skips
importing transformers' modelling code altogether.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from reward_server.embeddings import location_cache
from reward_server.embeddings.errors import TableLoadError
from reward_server.embeddings.files import CheckpointFiles

log = logging.getLogger(__name__)

# Tried after the config's own `architectures`; causal-LM first because policies are decoders.
_AUTO_CLASSES = (
    "AutoModelForCausalLM",
    "AutoModelForImageTextToText",
    "AutoModelForVision2Seq",
    "AutoModel",
)
_SUB_CONFIGS = ("text_config", "llm_config", "language_config")
_NOT_AN_INPUT_TABLE = ("lm_head", "position", "token_type", "patch")
_MAX_LISTED = 12
# What building an unsupported model or calling transformers' private key-mapping API can raise:
# Auto classes raise ValueError for configs they do not cover; optional backends raise ImportError.
_BUILD_ERRORS = (
    ValueError,
    KeyError,
    TypeError,
    AttributeError,
    ImportError,
    NotImplementedError,
    RuntimeError,
)
_API_DRIFT = (AttributeError, TypeError, ValueError, KeyError, IndexError, re.error)


@dataclass(frozen=True)
class LocatedTensor:
    """The checkpoint key of the input-embedding table and how it was found (for logs)."""

    key: str
    model_type: str
    method: str  # exact | conversion-mapping | prefix | suffix | tied | heuristic


def read_raw_config(directory: Path) -> dict[str, Any]:
    """`config.json` as a plain dict (the heuristic and the cache need it without transformers)."""
    path = directory / "config.json"
    if not path.is_file():
        raise TableLoadError(f"{directory} has no config.json; point at a Hugging Face checkpoint directory")
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise TableLoadError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise TableLoadError(f"{path} must hold a JSON object")
    return config


def locate_embedding(directory: Path, files: CheckpointFiles) -> LocatedTensor:
    """Return the key of the input-embedding tensor in `files` (see the module docstring)."""
    raw_config = read_raw_config(directory)
    digest = location_cache.layout_digest(raw_config, files.keys)
    cached = location_cache.recall(digest)
    if cached is not None and cached["key"] in files.key_to_file:
        return LocatedTensor(**cached)
    located = _from_structure(directory, files.keys)
    if located is None:
        located = _from_heuristic(directory, raw_config, files)
    log.info("embedding table of %s: %s (found by %s)", directory, located.key, located.method)
    location_cache.remember(
        digest, {"key": located.key, "model_type": located.model_type, "method": located.method}
    )
    return located


def build_meta_model(config: Any) -> torch.nn.Module | None:
    """Instantiate the model for `config` on the meta device, or None if transformers has no class for it.

    The meta device allocates no storage, so even a 72B config costs only the module objects.
    """
    import transformers

    factories: list[tuple[str, Any]] = []
    for name in getattr(config, "architectures", None) or []:
        cls = _optional_attr(transformers, name)
        if cls is not None and hasattr(cls, "_from_config"):
            factories.append((name, cls._from_config))
    for name in _AUTO_CLASSES:
        auto = _optional_attr(transformers, name)
        if auto is not None:
            factories.append((name, auto.from_config))
    failures = []
    for name, factory in factories:
        try:
            with torch.device("meta"):
                return factory(config)
        except _BUILD_ERRORS as exc:
            failures.append(f"{name}: {type(exc).__name__}")
    log.info("no transformers class builds %s (%s)", type(config).__name__, "; ".join(failures))
    return None


def input_embedding_name(model: torch.nn.Module) -> str:
    """Qualified parameter name of `model.get_input_embeddings().weight`."""
    module = model.get_input_embeddings()
    weight = getattr(module, "weight", None)
    for module_name, candidate in model.named_modules():
        if candidate is module:
            for param_name, param in module.named_parameters():
                if param is weight:
                    return f"{module_name}.{param_name}" if module_name else param_name
    raise TableLoadError(f"{type(model).__name__}.get_input_embeddings() has no weight parameter")


def match_checkpoint_key(model: torch.nn.Module, param_name: str, keys: list[str]) -> tuple[str, str]:
    """Map the model's parameter name onto one stored checkpoint key; returns (key, method)."""
    found = _match(model, param_name, keys)
    if found is not None:
        return found
    for twin in _tied_twins(model, param_name):
        tied = _match(model, twin, keys)
        if tied is not None:
            return tied[0], "tied"
    raise TableLoadError(
        f"cannot find the input-embedding tensor {param_name!r} of {type(model).__name__} among the "
        f"checkpoint's {len(keys)} keys; candidates: {_listing(_embed_like(keys))}"
    )


def _from_structure(directory: Path, keys: list[str]) -> LocatedTensor | None:
    config = _auto_config(directory)
    if config is None:
        return None
    model = build_meta_model(config)
    if model is None:
        return None
    try:
        param_name = input_embedding_name(model)
    except NotImplementedError:
        log.info("%s does not expose get_input_embeddings()", type(model).__name__)
        return None
    key, method = match_checkpoint_key(model, param_name, keys)
    return LocatedTensor(key=key, model_type=str(config.model_type), method=method)


def _auto_config(directory: Path) -> Any | None:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(directory), local_files_only=True, trust_remote_code=False)
    except (ValueError, KeyError, OSError) as exc:  # unknown model_type or custom code: use the heuristic
        log.info(
            "transformers cannot read %s/config.json (%s); using the structural heuristic", directory, exc
        )
        return None


def _match(model: torch.nn.Module, name: str, keys: list[str]) -> tuple[str, str] | None:
    keyset = set(keys)
    if name in keyset:
        return name, "exact"
    steps = (
        ("conversion-mapping", lambda: _conversion_matches(model, name, keys)),
        ("prefix", lambda: [k for k in _prefix_variants(name, model) if k in keyset]),
        ("suffix", lambda: _suffix_matches(name, keys)),
    )
    for method, find in steps:
        hits = sorted(set(find()))
        if len(hits) == 1:
            return hits[0], method
        if len(hits) > 1:
            raise TableLoadError(
                f"the input-embedding tensor {name!r} matches several checkpoint keys "
                f"({method}): {_listing(hits)}"
            )
    return None


def _conversion_matches(model: torch.nn.Module, name: str, keys: list[str]) -> list[str]:
    """Checkpoint keys that transformers itself would load into parameter `name`."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key
    except ImportError:  # transformers 4.x
        return _legacy_conversion_matches(model, name, keys)
    try:
        transforms = get_model_conversion_mapping(model)
        renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
        converters = [t for t in transforms if isinstance(t, WeightConverter)]
        state = model.state_dict()  # meta tensors: free
        prefix = getattr(model, "base_model_prefix", None)
        hits = []
        for key in keys:
            renamed, converter = rename_source_key(key, renamings, converters, prefix, state)
            if renamed == name and converter is None:  # a converter would mean the stored tensor is reshaped
                hits.append(key)
        return hits
    except _API_DRIFT as exc:  # private API: if it moves, the prefix/suffix steps still apply
        log.warning(
            "transformers' checkpoint conversion mapping failed (%s); falling back to name matching", exc
        )
        return []


def _legacy_conversion_matches(model: torch.nn.Module, name: str, keys: list[str]) -> list[str]:
    mapping: dict[str, str] = getattr(model, "_checkpoint_conversion_mapping", None) or {}
    hits = []
    for key in keys:
        renamed = key
        for pattern, replacement in mapping.items():
            renamed, count = re.subn(pattern, replacement, key)
            if count:
                break
        if renamed == name:
            hits.append(key)
    return hits


def _prefix_variants(name: str, model: torch.nn.Module) -> list[str]:
    prefixes = {p + "." for p in (getattr(model, "base_model_prefix", ""), "model") if p}
    variants = [name.removeprefix(p) for p in prefixes if name.startswith(p)]
    variants += [p + name for p in prefixes if not name.startswith(p)]
    return variants


def _suffix_matches(name: str, keys: list[str]) -> list[str]:
    suffix = ".".join(name.split(".")[-2:])  # module leaf + parameter, e.g. "embed_tokens.weight"
    return [k for k in keys if (k == suffix or k.endswith("." + suffix)) and not _excluded(k)]


def _tied_twins(model: torch.nn.Module, name: str) -> list[str]:
    """Parameters tied to the embedding (usually `lm_head.weight`), if the config ties them."""
    config = getattr(model, "config", None)
    text_config = (
        config.get_text_config() if config is not None and hasattr(config, "get_text_config") else config
    )
    if not getattr(text_config, "tie_word_embeddings", False) and not getattr(
        config, "tie_word_embeddings", False
    ):
        return []
    tied = getattr(model, "_tied_weights_keys", None) or {}
    if isinstance(tied, dict):  # transformers 5: {target: source}
        return [target for target, source in tied.items() if source == name]
    return [target for target in tied if "lm_head" in target]  # transformers 4: list of targets


def _from_heuristic(directory: Path, raw_config: dict[str, Any], files: CheckpointFiles) -> LocatedTensor:
    vocab_sizes = _vocab_sizes(raw_config)
    headers = files.all_headers()
    hits = sorted(
        key
        for key, header in headers.items()
        if len(header.shape) == 2
        and "embed" in key.lower()
        and not _excluded(key)
        and (not vocab_sizes or header.shape[0] in vocab_sizes)
    )
    model_type = str(raw_config.get("model_type", "unknown"))
    if len(hits) == 1:
        return LocatedTensor(key=hits[0], model_type=model_type, method="heuristic")
    wanted = f"first dim in {sorted(vocab_sizes)}" if vocab_sizes else "no vocab_size in config.json"
    shown = [f"{k} {list(headers[k].shape)}" for k in (hits or _embed_like(list(headers)))]
    problem = "several tensors look like" if hits else "no tensor looks like"
    raise TableLoadError(
        f"transformers does not know model_type {model_type!r} in {directory} (custom code is never run), and "
        f"{problem} the input-embedding table (2-D, name contains 'embed', {wanted}): {_listing(shown)}"
    )


def _vocab_sizes(raw_config: dict[str, Any]) -> set[int]:
    scopes = [raw_config] + [raw_config[s] for s in _SUB_CONFIGS if isinstance(raw_config.get(s), dict)]
    return {scope["vocab_size"] for scope in scopes if isinstance(scope.get("vocab_size"), int)}


def _excluded(key: str) -> bool:
    lowered = key.lower()
    return any(word in lowered for word in _NOT_AN_INPUT_TABLE)


def _embed_like(keys: list[str]) -> list[str]:
    return sorted(k for k in keys if "embed" in k.lower())


def _listing(items: list[str]) -> str:
    if not items:
        return "none"
    more = f" … and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return ", ".join(items[:_MAX_LISTED]) + more


def _optional_attr(module: Any, name: str) -> Any | None:
    try:
        return getattr(module, name)
    except (ImportError, AttributeError, RuntimeError):  # lazy module: unavailable backends raise on access
        return None
