"""Reading *scored* rows (what ``score`` writes, or any file with a ``reward`` field) for ``filter``
and ``report``: the task type, the group, and the reward components of each row, validated with
line numbers like the raw input.

Two layouts, possibly mixed in one file: a row with one response (``reward``; its GRPO group is
the ``--group-field`` value), or a row holding a whole group (``rewards``: one per response).
"""

from __future__ import annotations

import json
import math
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reward_server.errors import ItemFieldError
from reward_server.offline.rows import (
    MISSING,
    PLURAL,
    TASK_OUTPUT_FIELD,
    FieldMap,
    RowError,
    SourceRow,
    get_field,
    iter_rows,
    raw_text,
)
from reward_server.offline.tasks import families

COMPONENTS = ("reward", "accuracy", "format", "bmas_forward", "bmas_backward")


@dataclass(frozen=True)
class ScoredRow:
    source: SourceRow
    task: str
    multi: bool
    group: Hashable | None  # single-response rows: the group key; None without one (or for multi rows)
    values: dict[str, list[float | None]]  # component -> one value per response

    @property
    def rewards(self) -> list[float]:
        return [v for v in self.values["reward"] if v is not None]


def is_scored(path: str | Path) -> bool:
    """Whether the first readable row carries rewards already (then ``filter`` need not score)."""
    for source in iter_rows(path):
        if source.data is not None:
            return "reward" in source.data or "rewards" in source.data
    return False


def group_key(value: Any) -> Hashable | None:
    """A hashable key for any JSON group id (``7`` and ``"7"`` stay distinct groups)."""
    if value is MISSING or value is None:
        return None
    return json.dumps(value, sort_keys=True)


def read_scored(source: SourceRow, fields: FieldMap) -> ScoredRow:
    """Validate one scored row; raise :class:`RowError` naming the line and field."""
    if source.error is not None:
        raise source.error
    row = source.data
    assert row is not None

    def fail(field: str, message: str) -> RowError:
        return RowError(source.line, field, message, raw_text(row))

    task_value = row.get(TASK_OUTPUT_FIELD, MISSING)
    task_field = TASK_OUTPUT_FIELD
    if task_value is MISSING:
        task_field = fields.task_type
        task_value = get_field(row, fields.task_type)
        if task_value is MISSING or task_value is None:
            task_value = fields.default_task_type
    if task_value is None:
        raise fail(fields.task_type, "missing (or pass --task-type for a single-task file)")
    try:
        task = families().resolve(task_value).name
    except ItemFieldError as exc:
        raise fail(task_field, exc.message) from None

    multi = "rewards" in row and "reward" not in row
    values: dict[str, list[float | None]] = {}
    for name in COMPONENTS:
        key = PLURAL[name] if multi else name
        raw = row.get(key)
        if name == "reward" and raw is None:
            raise fail("reward", "missing: not a scored row (run `reward-server score` first)")
        items = raw if multi else [raw]
        if multi and not isinstance(items, list):
            if raw is None:
                values[name] = [None] * len(values["reward"])
                continue
            raise fail(key, f"must be a list of numbers, got {type(raw).__name__}")
        checked: list[float | None] = []
        for value in items:
            if value is None and name != "reward":
                checked.append(None)
            elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                checked.append(float(value))
            else:
                raise fail(key, f"must be a finite number, got {value!r}")
        if name != "reward" and len(checked) != len(values["reward"]):
            raise fail(key, f"has {len(checked)} values for {len(values['reward'])} rewards")
        values[name] = checked
    if not values["reward"]:
        raise fail("rewards", "is an empty list")
    group = None if multi else group_key(get_field(row, fields.group))
    return ScoredRow(source, task, multi, group, values)


__all__ = ["COMPONENTS", "ScoredRow", "group_key", "is_scored", "read_scored"]
