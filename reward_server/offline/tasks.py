"""What the offline commands need to know of a task type named in a file, read from the
reward-family registry (SPEC §14): none of them lists families by hand.

An offline command is one process doing one job, so the registry it uses (the built-ins, installed
plug-ins and the command's ``--rewards-module`` files) is set once, at the command's start, with
:func:`use_modules`; every helper here and the row readers read it through :func:`families`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from reward_server.rewards.registry import FamilyRegistry, build_registry, default_registry

_active: FamilyRegistry | None = None


def use_modules(modules: Sequence[str]) -> FamilyRegistry:
    """The registry this command scores with: the defaults plus ``modules`` (``--rewards-module``)."""
    global _active
    _active = build_registry(modules)
    return _active


def families() -> FamilyRegistry:
    return _active or default_registry()


def continuous_tasks(registry: FamilyRegistry | None = None) -> list[str]:
    """Families whose accuracy is continuous (IoU, BMAS, tIoU, ANLS): ``filter``'s std rule."""
    return [family.name for family in (registry or families()).families() if not family.binary]


def judged(task: str, registry: FamilyRegistry | None = None) -> bool:
    """Whether "all correct" / "all wrong" describe a group of this task: its accuracy runs from 0
    (wrong) to 1 (right), binary or not (IoU 1 is a perfect box); BMAS's [-2, 2] does not."""
    known = registry or families()
    return task in known and known.resolve(task).accuracy_range == (0.0, 1.0)


def task_order(tasks: Iterable[str], registry: FamilyRegistry | None = None) -> list[str]:
    """``tasks`` in the registry's order (the paper's five first), unknown names last, by name."""
    names = (registry or families()).names()
    return sorted(tasks, key=lambda t: (names.index(t) if t in names else len(names), t))


def accuracy_label(task: str, registry: FamilyRegistry | None = None) -> str:
    """``accuracy``, with its range when that is not [0, 1] (``accuracy (-2..2)`` for BMAS)."""
    known = registry or families()
    if task not in known:
        return "accuracy"
    low, high = known.resolve(task).accuracy_range
    return "accuracy" if (low, high) == (0.0, 1.0) else f"accuracy ({low:g}..{high:g})"
