"""The options one scored item carries, resolved: the request's, else the server's defaults.

Pure and frozen, so the reward families, the engine and the offline commands share one type and an
item's options can key a cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from reward_server.rewards.profiles import DEFAULT_PROFILE

BmasReduction = Literal["sum", "mean"]


@dataclass(frozen=True)
class ResolvedOptions:
    """Per-request knobs (SPEC §6, §8, §13b, §14); the server's settings supply the defaults."""

    format_weight: float = 1.0
    bmas_reduction: BmasReduction = "sum"
    profile: str = DEFAULT_PROFILE  # a key of rewards.profiles.PROFILES, validated by the caller
    explain: bool = False  # add ``parsed`` (what the rule read) to each result; never changes a number
    tiou_boundary_penalty: bool = False  # temporal grounding: Time-R1's boundary penalty (needs a duration)


__all__ = ["BmasReduction", "ResolvedOptions"]
