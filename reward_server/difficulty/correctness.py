"""When a scored rollout counts as *correct* for the difficulty posterior.

The posterior models a Bernoulli success per rollout, so continuous rewards need a threshold.
Only the accuracy component is read (the format reward says nothing about whether the policy can
solve the prompt):

* yes_no, mcq, chart: the accuracy is already 0 or 1; correct when it is 1.
* grounding: IoU >= ``grounding_threshold`` (0.5 by default, the usual detection criterion).
* open_ended: the BMAS *mean* of the two directions, in [-1, 1] whatever ``bmas_reduction`` the
  request chose, >= ``open_ended_threshold`` (0.75 by default; identical texts score 1).
"""

from __future__ import annotations

from dataclasses import dataclass

from reward_server.rewards.tasks import TaskType


@dataclass(frozen=True)
class Thresholds:
    grounding: float = 0.5
    open_ended: float = 0.75


def is_correct(
    task: TaskType, accuracy: float, bmas_forward: float | None, bmas_backward: float | None, thresholds: Thresholds
) -> bool:
    if task is TaskType.GROUNDING:
        return accuracy >= thresholds.grounding
    if task is TaskType.OPEN_ENDED:
        if bmas_forward is None or bmas_backward is None:
            return False
        return (bmas_forward + bmas_backward) / 2.0 >= thresholds.open_ended
    return accuracy >= 0.5  # binary rules: 0 or 1
