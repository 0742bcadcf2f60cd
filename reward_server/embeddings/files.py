"""The safetensors files of a checkpoint directory: which file holds which tensor.

Only headers and the index are read here. A sharded 7B checkpoint is ~15 GB while its embedding
table is ~1 GB, so we map every key to its shard from `*.safetensors.index.json` (or from the
8-byte-length + JSON header that starts every safetensors file) and then open exactly one shard
to read exactly one tensor.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from reward_server.embeddings.errors import TableLoadError

INDEX_SUFFIX = ".safetensors.index.json"
_PREFERRED_INDEX = "model" + INDEX_SUFFIX
_PREFERRED_SINGLE = "model.safetensors"
_MAX_HEADER_BYTES = 100 * 1024 * 1024  # the format's own limit; guards against reading a non-safetensors file


@dataclass(frozen=True)
class TensorHeader:
    """A tensor's dtype (safetensors spelling, e.g. "BF16") and shape, known without reading its data."""

    dtype: str
    shape: tuple[int, ...]


def read_header(file: Path) -> dict[str, TensorHeader]:
    """Parse one safetensors file's header (no tensor data is read)."""
    try:
        with open(file, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) != 8:
                raise TableLoadError(
                    f"{file} is not a safetensors file (shorter than its 8-byte header length)"
                )
            (length,) = struct.unpack("<Q", prefix)
            if length > _MAX_HEADER_BYTES:
                raise TableLoadError(
                    f"{file} is not a safetensors file (header length {length} is implausible)"
                )
            raw = json.loads(handle.read(length))
    except OSError as exc:
        raise TableLoadError(f"cannot read safetensors file {file}: {exc}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TableLoadError(f"{file} is not a safetensors file (its header is not JSON)") from exc
    return {
        key: TensorHeader(dtype=str(entry["dtype"]), shape=tuple(int(d) for d in entry["shape"]))
        for key, entry in raw.items()
        if key != "__metadata__"
    }


@dataclass(frozen=True)
class CheckpointFiles:
    """Key → shard map of one checkpoint directory, plus lazily read headers."""

    directory: Path
    key_to_file: dict[str, Path]
    _headers: dict[Path, dict[str, TensorHeader]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def keys(self) -> list[str]:
        """All tensor keys of the checkpoint, sorted."""
        return sorted(self.key_to_file)

    def header(self, key: str) -> TensorHeader:
        """dtype and shape of `key`, from its own shard's header only."""
        file = self._file_of(key)
        if file not in self._headers:
            self._headers[file] = read_header(file)
        try:
            return self._headers[file][key]
        except KeyError:
            raise TableLoadError(
                f"the index says {key!r} is in {file.name}, but that file has no such tensor"
            ) from None

    def all_headers(self) -> dict[str, TensorHeader]:
        """Headers of every tensor (reads every shard's header; used only by the structural fallback)."""
        return {key: self.header(key) for key in self.keys}

    def read_tensor(self, key: str) -> torch.Tensor:
        """Read exactly one tensor, as stored (dtype untouched), from the one shard that holds it."""
        file = self._file_of(key)
        try:
            with safe_open(str(file), framework="pt", device="cpu") as handle:
                return handle.get_tensor(key)
        except Exception as exc:  # safetensors raises its own error types; the cause is kept
            raise TableLoadError(f"cannot read tensor {key!r} from {file}: {exc}") from exc

    def _file_of(self, key: str) -> Path:
        try:
            file = self.key_to_file[key]
        except KeyError:
            raise TableLoadError(f"{self.directory} has no tensor {key!r}") from None
        if not file.is_file():
            raise TableLoadError(
                f"tensor {key!r} is mapped to {file.name}, which is missing from {self.directory}"
            )
        return file


def scan_checkpoint(directory: Path) -> CheckpointFiles:
    """Map every tensor key of `directory` to the safetensors file that holds it.

    An index (`model.safetensors.index.json` preferred) wins; otherwise `model.safetensors`;
    otherwise every `*.safetensors` file's header. `.bin`/`.pt` checkpoints are refused because
    reading one tensor from a pickle means unpickling the whole file.
    """
    index = _pick(directory, INDEX_SUFFIX, _PREFERRED_INDEX)
    if index is not None:
        return CheckpointFiles(directory, _read_index(index))
    single = directory / _PREFERRED_SINGLE
    files = (
        [single] if single.is_file() else sorted(p for p in directory.glob("*.safetensors") if p.is_file())
    )
    if not files:
        others = sorted(p.name for p in directory.iterdir() if p.suffix in {".bin", ".pt", ".pth", ".ckpt"})
        hint = f" (found {', '.join(others)}; convert it to safetensors first)" if others else ""
        raise TableLoadError(f"{directory} has no *.safetensors weights{hint}")
    key_to_file: dict[str, Path] = {}
    for file in files:
        for key in read_header(file):
            key_to_file.setdefault(key, file)
    return CheckpointFiles(directory, key_to_file)


def _pick(directory: Path, suffix: str, preferred: str) -> Path | None:
    if (directory / preferred).is_file():
        return directory / preferred
    found = sorted(p for p in directory.glob("*" + suffix) if p.is_file())
    if len(found) > 1:
        raise TableLoadError(
            f"{directory} has several safetensors indexes ({', '.join(p.name for p in found)}); "
            f"keep one or name it {preferred}"
        )
    return found[0] if found else None


def _read_index(index: Path) -> dict[str, Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TableLoadError(
            f"{index} is not a valid safetensors index (needs a 'weight_map'): {exc}"
        ) from exc
    if not isinstance(weight_map, dict) or not weight_map:
        raise TableLoadError(f"{index} has an empty or malformed 'weight_map'")
    return {str(key): index.parent / str(name) for key, name in weight_map.items()}
