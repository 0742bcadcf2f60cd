"""Remember where a checkpoint's embedding table is, across processes.

Locating the table from the model's structure needs transformers' modelling code, whose first
import costs ~3-5 s (torch.distributed, dynamo, ...) against ~0.15 s for the rest of a load.
The answer depends only on config.json, the checkpoint's key list and the transformers version,
so it is stored under a digest of exactly those, one small JSON file per checkpoint layout:
a changed config, re-sharded weights or a transformers upgrade simply misses the cache.

Directory: `$REWARD_SERVER_CACHE_DIR` (set it to an empty string to disable the disk cache),
else `$XDG_CACHE_HOME/reward_server`, else `~/.cache/reward_server`. Unreadable or unwritable
caches are ignored: the cache can only make a load faster, never make it fail.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CACHE_ENV = "REWARD_SERVER_CACHE_DIR"
_SCHEMA = "embedding-location/1"
_FIELDS = ("key", "model_type", "method")

_memory: dict[str, dict[str, str]] = {}
_lock = threading.Lock()


def layout_digest(raw_config: dict[str, Any], keys: list[str]) -> str:
    """Digest of everything the located key depends on."""
    try:
        transformers_version = importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        transformers_version = "absent"
    payload = json.dumps([_SCHEMA, transformers_version, raw_config, sorted(keys)], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def recall(digest: str) -> dict[str, str] | None:
    """The stored answer for `digest` (memory first, then disk), or None."""
    with _lock:
        if digest in _memory:
            return dict(_memory[digest])
    directory = cache_dir()
    if directory is None:
        return None
    try:
        entry = json.loads((directory / f"{digest}.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict) or not all(isinstance(entry.get(f), str) for f in _FIELDS):
        return None
    answer = {f: entry[f] for f in _FIELDS}
    with _lock:
        _memory[digest] = answer
    return dict(answer)


def remember(digest: str, answer: dict[str, str]) -> None:
    """Store `answer` in memory and (atomically, best effort) on disk."""
    answer = {f: answer[f] for f in _FIELDS}
    with _lock:
        _memory[digest] = answer
    directory = cache_dir()
    if directory is None:
        return
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=directory, suffix=".tmp", delete=False) as handle:
            json.dump(answer, handle)
        os.replace(handle.name, directory / f"{digest}.json")
    except OSError as exc:
        log.debug("cannot write the embedding-location cache in %s: %s", directory, exc)


def forget() -> None:
    """Drop the in-memory cache (tests use it to force a fresh structural lookup)."""
    with _lock:
        _memory.clear()


def cache_dir() -> Path | None:
    """Where entries live, or None when disabled."""
    configured = os.environ.get(CACHE_ENV)
    if configured is not None:
        return Path(configured).expanduser() if configured.strip() else None
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "reward_server"
