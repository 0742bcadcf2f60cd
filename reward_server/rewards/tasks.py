"""Task types and the names clients may use for them (SPEC §1).

Routing is by the declared type only: guessing a type from the text would silently score a caption
as a number, so an unknown name is a client error that lists what is accepted.
"""

from __future__ import annotations

import enum
import re

from reward_server.rewards.errors import UnknownTaskType


class TaskType(str, enum.Enum):
    """The five data types of Mixed-R1; the value is the canonical wire name."""

    YES_NO = "yes_no"
    MCQ = "mcq"
    CHART = "chart"
    GROUNDING = "grounding"
    OPEN_ENDED = "open_ended"


_ALIASES: dict[TaskType, tuple[str, ...]] = {
    TaskType.YES_NO: ("yorn", "binary"),
    TaskType.MCQ: ("multiple_choice", "choice"),
    TaskType.CHART: ("numeric", "numerical", "chartqa", "doc", "ocr_number"),
    TaskType.GROUNDING: ("iou", "rec", "bbox", "detection"),
    TaskType.OPEN_ENDED: ("open", "caption", "free_form", "bmas"),
}

_SEPARATORS = re.compile(r"[\s_\-]+")


def normalise_task_name(name: str) -> str:
    """Fold the spellings clients use (``Multiple-Choice``, ``free form``) onto one key."""
    return _SEPARATORS.sub("_", name.strip().lower()).strip("_")


# Every accepted normalised name, canonical ones included, so a lookup needs this table only.
TASK_ALIASES: dict[str, TaskType] = {task.value: task for task in TaskType}
TASK_ALIASES.update({alias: task for task, aliases in _ALIASES.items() for alias in aliases})


def _valid_names() -> str:
    canonical = ", ".join(task.value for task in TaskType)
    aliases = ", ".join(f"{alias}->{task.value}" for task, names in _ALIASES.items() for alias in names)
    return f"valid: {canonical} (aliases: {aliases})"


def parse_task_type(name: str) -> TaskType:
    """Resolve a client's task name; an unknown one raises so it is never scored as something else."""
    if isinstance(name, TaskType):
        return name
    if not isinstance(name, str):
        raise UnknownTaskType(f"task type must be a string, got {type(name).__name__}; {_valid_names()}")
    task = TASK_ALIASES.get(normalise_task_name(name))
    if task is None:
        shown = name if len(name) <= 64 else name[:61] + "..."
        raise UnknownTaskType(f"unknown task type {shown!r}; {_valid_names()}")
    return task


__all__ = ["TASK_ALIASES", "TaskType", "normalise_task_name", "parse_task_type"]
