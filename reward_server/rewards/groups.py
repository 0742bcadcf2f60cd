"""GRPO group statistics (SPEC §9): the learning signal a group of responses to one prompt carries.

GRPO normalises each reward by its group's mean and std; a group whose rewards are all equal has
zero advantage everywhere and teaches nothing. The service reports this per request and the
offline data engine drops such prompts, both through this one function.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class GroupSummary:
    group_id: Hashable
    size: int
    mean: float
    std: float  # sample std (n-1) as TRL/verl normalise advantages; 0 for a single item
    min: float
    max: float
    zero_variance: bool


def summarise_group(group_id: Hashable, rewards: Sequence[float], tolerance: float = 1e-6) -> GroupSummary:
    """Statistics of one group; ``zero_variance`` when max - min <= tolerance (continuous rewards
    such as IoU and BMAS are never bit-equal, so exact equality would never fire for them)."""
    n = len(rewards)
    if n == 0:
        raise ValueError("a group needs at least one reward")
    mean = math.fsum(rewards) / n
    var = math.fsum((r - mean) ** 2 for r in rewards) / (n - 1) if n > 1 else 0.0
    lo, hi = min(rewards), max(rewards)
    return GroupSummary(group_id, n, mean, math.sqrt(var), lo, hi, (hi - lo) <= tolerance)


def summarise_groups(
    group_ids: Sequence[Hashable | None], rewards: Sequence[float], tolerance: float = 1e-6
) -> list[GroupSummary]:
    """One summary per distinct group id, in order of first appearance; items without one are skipped."""
    members: dict[Hashable, list[float]] = {}
    for gid, reward in zip(group_ids, rewards):
        if gid is not None:
            members.setdefault(gid, []).append(reward)
    return [summarise_group(gid, values, tolerance) for gid, values in members.items()]
