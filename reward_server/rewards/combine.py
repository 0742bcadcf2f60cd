"""The final reward (SPEC §8): ``accuracy + format_weight * format``.

Kept as its own function so the server, the offline scorer and the tests cannot drift apart, and
so the finiteness promise ("every number returned is finite") is checked in one place.
"""

from __future__ import annotations

import math

from reward_server.errors import ItemFieldError


def final_reward(accuracy: float, format_score: float, format_weight: float) -> float:
    """Combine components; a non-finite weight is the client's error, a non-finite score is ours."""
    if not math.isfinite(format_weight):
        raise ItemFieldError(
            "format_weight", f"format_weight must be a finite number, got {format_weight!r}"
        )
    if not (math.isfinite(accuracy) and math.isfinite(format_score)):
        raise ValueError(f"non-finite reward component: accuracy={accuracy!r}, format={format_score!r}")
    reward = float(accuracy) + float(format_weight) * float(format_score)
    if not math.isfinite(reward):
        raise ItemFieldError("format_weight", f"format_weight {format_weight!r} overflows the reward")
    return reward


__all__ = ["final_reward"]
