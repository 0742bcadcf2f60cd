"""When a scored rollout counts as *correct* for the difficulty posterior.

The posterior models a Bernoulli success per rollout, so continuous rewards need a threshold. Only
the accuracy (and the family's sub-scores) are read: the format reward says nothing about whether
the policy can solve the prompt. Each family decides (``RewardFamily.is_correct``): a binary one is
correct at 1; a continuous one at or above its threshold (IoU 0.5, the usual detection criterion;
open-ended: the BMAS *mean* of the two directions, in [-1, 1] whatever ``bmas_reduction`` the
request chose, >= 0.75; tIoU and ANLS 0.5). The server's settings may move two of them:
``difficulty_grounding_threshold`` and ``difficulty_open_ended_threshold``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from reward_server.rewards.scoring import ItemReward, PreparedItem


@dataclass(frozen=True)
class Thresholds:
    """Per family name, a threshold that replaces the family's own ``correct_threshold``."""

    by_family: Mapping[str, float] = field(default_factory=dict)


def is_correct(item: PreparedItem, scored: ItemReward, thresholds: Thresholds) -> bool:
    family = item.truth.family
    return family.is_correct(scored.accuracy, scored.sub_scores, thresholds.by_family.get(family.name))
