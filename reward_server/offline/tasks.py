"""What the offline commands need to know of a task type named in a scored file, read from the
reward-family registry (SPEC §14): none of them lists families by hand."""

from __future__ import annotations

from collections.abc import Iterable

from reward_server.rewards.registry import FamilyRegistry, default_registry


def continuous_tasks(registry: FamilyRegistry | None = None) -> list[str]:
    """Families whose accuracy is continuous (IoU, BMAS, tIoU, ANLS): ``filter``'s std rule."""
    return [family.name for family in (registry or default_registry()).families() if not family.binary]


def judged(task: str, registry: FamilyRegistry | None = None) -> bool:
    """Whether "all correct" / "all wrong" describe a group of this task: its accuracy runs from 0
    (wrong) to 1 (right), binary or not (IoU 1 is a perfect box); BMAS's [-2, 2] does not."""
    families = registry or default_registry()
    return task in families and families.resolve(task).accuracy_range == (0.0, 1.0)


def task_order(tasks: Iterable[str], registry: FamilyRegistry | None = None) -> list[str]:
    """``tasks`` in the registry's order (the paper's five first), unknown names last, by name."""
    names = (registry or default_registry()).names()
    return sorted(tasks, key=lambda t: (names.index(t) if t in names else len(names), t))


def accuracy_label(task: str, registry: FamilyRegistry | None = None) -> str:
    """``accuracy``, with its range when that is not [0, 1] (``accuracy (-2..2)`` for BMAS)."""
    families = registry or default_registry()
    if task not in families:
        return "accuracy"
    low, high = families.resolve(task).accuracy_range
    return "accuracy" if (low, high) == (0.0, 1.0) else f"accuracy ({low:g}..{high:g})"
