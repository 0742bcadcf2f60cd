"""Reading rollout files: streaming rows with line numbers, field mapping, per-row validation.

Files are read one row at a time (JSONL line by line, Parquet batch by batch), so memory does not
grow with the file. Every row carries its 1-based line number (the row number for Parquet) and
the input position just after it, which is what a resumed run seeks to. Validation is the HTTP
service's (``reward_server.items``: ``RequestItem`` + ``build_items``), so a row is accepted offline
exactly when the same item would be accepted by ``POST /score``; errors name the line and the
file's own field name.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from reward_server.errors import DataError, ItemFieldError, RewardServerError
from reward_server.items.errors import validation_details
from reward_server.items.json_values import loads_lenient
from reward_server.items.models import RequestItem
from reward_server.items.settings import Settings
from reward_server.items.validation import build_items
from reward_server.offline.tasks import families
from reward_server.rewards.family import RewardFamily
from reward_server.rewards.options import ResolvedOptions
from reward_server.rewards.scoring import PreparedItem

MISSING: Any = object()
PARQUET_SUFFIXES = (".parquet", ".pq")

#: Fields ``score`` adds to every output row (the plural forms on rows with a list of responses).
SCORE_FIELDS = ("reward", "accuracy", "format", "bmas_forward", "bmas_backward")
PLURAL = {
    "reward": "rewards",
    "accuracy": "accuracies",
    "format": "formats",
    "bmas_forward": "bmas_forwards",
    "bmas_backward": "bmas_backwards",
}
TASK_OUTPUT_FIELD = "reward_task_type"


class RowError(DataError):
    """A bad row: where (line, field) and what is wrong, in words a user can act on."""

    def __init__(self, line: int, field: str, message: str, raw: str | None = None) -> None:
        super().__init__(message, [{"item": line, "field": field, "message": message}])
        self.line = line
        self.field = field
        self.raw = raw

    def describe(self, path: str | os.PathLike[str]) -> str:
        return f"{path}:{self.line}: field {self.field!r}: {self.message}"

    def record(self) -> dict[str, Any]:
        """One line of ``OUT.rejected.jsonl``."""
        return {"line": self.line, "field": self.field, "message": self.message, "row": self.raw}


@dataclass(frozen=True)
class SourceRow:
    """One input row; ``data`` is None when the line itself is unreadable (then ``error`` is set)."""

    line: int
    position: int  # resume position after this row: byte offset (JSONL) or row index (Parquet)
    data: dict[str, Any] | None
    raw: str | None = None
    error: RowError | None = None


@dataclass(frozen=True)
class FieldMap:
    """Where each item field lives in the file's rows. Dotted names reach into nested objects
    (``reward_model.ground_truth`` for verl-style Parquet) when no top-level key has that name."""

    response: str = "response"
    responses: str = "responses"
    ground_truth: str = "ground_truth"
    task_type: str = "task_type"
    group: str = "group_id"
    default_task_type: str | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "response": self.response,
            "responses": self.responses,
            "ground_truth": self.ground_truth,
            "task_type": self.task_type,
            "group": self.group,
            "default_task_type": self.default_task_type,
        }


def get_field(row: dict[str, Any], name: str) -> Any:
    """``row[name]``, else the dotted path ``a.b.c`` through nested objects; ``MISSING`` if absent."""
    if name in row:
        return row[name]
    if "." not in name:
        return MISSING
    value: Any = row
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return MISSING
        value = value[part]
    return value


def is_parquet(path: str | os.PathLike[str]) -> bool:
    return str(path).lower().endswith(PARQUET_SUFFIXES)


def input_identity(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What makes a resume safe: size and hashes of the first and last MiB. Robust to moves, copies
    and touch (unlike path or mtime); catches any edit that changes the size or either end."""
    p = Path(path)
    size = p.stat().st_size
    chunk = 1 << 20
    with p.open("rb") as f:
        head = hashlib.sha256(f.read(chunk)).hexdigest()[:16]
        f.seek(max(0, size - chunk))
        tail = hashlib.sha256(f.read(chunk)).hexdigest()[:16]
    return {"size": size, "head": head, "tail": tail}


def progress_total(path: str | os.PathLike[str]) -> tuple[int, str]:
    """Total for a progress bar: bytes for JSONL (no counting pass), rows for Parquet (metadata)."""
    if is_parquet(path):
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows, "rows"
    return Path(path).stat().st_size, "B"


def iter_rows(path: str | os.PathLike[str], start: int = 0, start_line: int = 0) -> Iterator[SourceRow]:
    """Stream rows from ``start`` (a position from a previous :class:`SourceRow`)."""
    if is_parquet(path):
        yield from _iter_parquet(path, start)
    else:
        yield from _iter_jsonl(path, start, start_line)


def _iter_jsonl(path: str | os.PathLike[str], start: int, start_line: int) -> Iterator[SourceRow]:
    line = start_line
    offset = start
    with open(path, "rb") as f:
        f.seek(start)
        for raw in f:
            line += 1
            offset += len(raw)
            if not raw.strip():
                continue  # blank lines (a trailing newline, a separator) are not rows
            try:
                data = loads_lenient(raw)  # too deep is a ValueError here, never a RecursionError
            except ValueError as exc:
                text = raw.decode("utf-8", "replace").rstrip("\n")
                yield SourceRow(line, offset, None, text, RowError(line, "(row)", f"not valid JSON: {exc}", text))
                continue
            if not isinstance(data, dict):
                text = raw.decode("utf-8", "replace").rstrip("\n")
                kind = type(data).__name__
                yield SourceRow(line, offset, None, text, RowError(line, "(row)", f"expected a JSON object, got {kind}", text))
                continue
            yield SourceRow(line, offset, data)


def _iter_parquet(path: str | os.PathLike[str], start: int) -> Iterator[SourceRow]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    index = 0
    groups = []
    for g in range(pf.metadata.num_row_groups):  # skip whole row groups already done
        rows = pf.metadata.row_group(g).num_rows
        if index + rows <= start:
            index += rows
        else:
            groups.append(g)
    if not groups:
        return
    for batch in pf.iter_batches(batch_size=1024, row_groups=groups):
        for data in batch.to_pylist():
            index += 1
            if index <= start:
                continue
            yield SourceRow(index, index, data)


@dataclass(frozen=True)
class ParsedRow:
    """A valid input row turned into engine items (one per response)."""

    source: SourceRow
    items: list[PreparedItem]
    multi: bool  # the row holds a list of responses (a whole GRPO group)
    task: RewardFamily
    ground_truth: Any  # as found in the file: what --url mode sends, so the server parses the same value


def offline_settings(settings: Settings) -> Settings:
    """The service's limits minus the per-request item cap, which means nothing for a file."""
    return settings.model_copy(update={"max_items_per_request": 1 << 30})


def _api_field(fields: FieldMap, api_field: str, response_name: str) -> str:
    return {"response": response_name, "ground_truth": fields.ground_truth, "task_type": fields.task_type}.get(
        api_field, api_field
    )


def parse_row(source: SourceRow, fields: FieldMap, options: ResolvedOptions, settings: Settings) -> ParsedRow:
    """Validate one row exactly as ``POST /score`` would validate its items; raise :class:`RowError`."""
    if source.error is not None:
        raise source.error
    row = source.data
    assert row is not None
    line = source.line
    raw = None

    def fail(field: str, message: str) -> RowError:
        nonlocal raw
        if raw is None:
            raw = raw_text(row)
        return RowError(line, field, message, raw)

    response_name = fields.response
    value = get_field(row, fields.response)
    if value is MISSING and fields.responses != fields.response:
        alt = get_field(row, fields.responses)
        if alt is not MISSING:
            response_name, value = fields.responses, alt
    if value is MISSING:
        raise fail(fields.response, f"missing (no {fields.response!r} string and no {fields.responses!r} list)")
    multi = isinstance(value, list)
    responses = value if multi else [value]
    if multi and not responses:
        raise fail(response_name, "is an empty list; a prompt row needs at least one response")

    truth = get_field(row, fields.ground_truth)
    if truth is MISSING or truth is None:
        raise fail(fields.ground_truth, "missing")
    task_value = get_field(row, fields.task_type)
    if task_value is MISSING or task_value is None:
        if fields.default_task_type is None:
            raise fail(fields.task_type, "missing (or pass --task-type for a single-task file)")
        task_value = fields.default_task_type
    try:
        task = families().resolve(task_value)
    except ItemFieldError as exc:
        raise fail(fields.task_type, exc.message) from None

    items: list[RequestItem] = []
    for index, response in enumerate(responses):
        name = f"{response_name}[{index}]" if multi else response_name
        try:
            items.append(RequestItem.model_validate({"response": response, "ground_truth": truth, "task_type": task.name}))
        except ValidationError as exc:
            errors = [{**err, "loc": ("items", 0, *err["loc"])} for err in exc.errors()]
            detail = validation_details(errors, None)[0]
            field = name if detail["field"] == "response" else _api_field(fields, detail["field"], name)
            raise fail(field, detail["message"]) from None
    try:
        built = build_items(items, options, settings, families())
    except RewardServerError as exc:
        detail = exc.details[0]
        index = detail.get("item") or 0
        name = f"{response_name}[{index}]" if multi else response_name
        raise fail(_api_field(fields, detail["field"], name), detail["message"]) from None
    return ParsedRow(source, built, multi, task, truth)


def raw_text(row: dict[str, Any], limit: int = 2000) -> str:
    text = json.dumps(row, ensure_ascii=False, default=json_default)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def json_default(value: Any) -> Any:
    """Parquet cells that JSON lacks: bytes (images) as base64 text, dates and decimals as strings."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        import base64

        return base64.b64encode(bytes(value)).decode("ascii")
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def dump_row(row: dict[str, Any]) -> bytes:
    return (json.dumps(row, ensure_ascii=False, default=json_default) + "\n").encode("utf-8")


__all__ = [
    "MISSING",
    "PLURAL",
    "SCORE_FIELDS",
    "TASK_OUTPUT_FIELD",
    "FieldMap",
    "ParsedRow",
    "RowError",
    "SourceRow",
    "dump_row",
    "get_field",
    "input_identity",
    "is_parquet",
    "iter_rows",
    "offline_settings",
    "parse_row",
    "progress_total",
]
