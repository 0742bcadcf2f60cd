"""From a family's :class:`Score` to the result of one item (SPEC §8): the format reward, the final
reward, every component, and the finiteness promise, in one place for every path that scores
(the engine's batches, the pool of math workers, the offline commands).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from reward_server.rewards.combine import final_reward
from reward_server.rewards.family import Score
from reward_server.rewards.format import format_reward
from reward_server.rewards.options import ResolvedOptions
from reward_server.rewards.rules import PreparedTruth, score_answer


@dataclass(frozen=True)
class PreparedItem:
    """One validated item: the response, its prepared ground truth and its resolved options."""

    response: str
    truth: PreparedTruth
    options: ResolvedOptions = field(default_factory=ResolvedOptions)


@dataclass(frozen=True)
class ItemReward:
    """Every component, not only the sum (SPEC §8): the accuracy, the format reward, the family's
    named sub-scores (``bmas_forward``/``bmas_backward`` for open-ended, ...), and with
    ``options.explain`` what the rule read (``parsed``)."""

    reward: float
    accuracy: float
    format: float
    sub_scores: Mapping[str, float] = field(default_factory=dict)
    parsed: Any = None
    timed_out: bool = False

    @property
    def bmas_forward(self) -> float | None:
        return self.sub_scores.get("bmas_forward")

    @property
    def bmas_backward(self) -> float | None:
        return self.sub_scores.get("bmas_backward")


def finite(value: float) -> float:
    """Last line of defence for SPEC §8 ("every number returned is finite")."""
    if not math.isfinite(value):
        raise ArithmeticError(f"non-finite reward component {value!r}")
    return float(value)


def combine(item: PreparedItem, score: Score, format_score: float | None = None) -> ItemReward:
    """The item's result from its family's score: ``accuracy + format_weight * format``."""
    fmt = format_reward(item.response) if format_score is None else format_score
    accuracy = finite(score.accuracy)
    return ItemReward(
        reward=finite(final_reward(accuracy, fmt, item.options.format_weight)),
        accuracy=accuracy,
        format=fmt,
        sub_scores={name: finite(value) for name, value in score.sub_scores.items()},
        parsed=score.parsed if item.options.explain else None,
        timed_out=score.timed_out,
    )


def score_inline(items: Sequence[PreparedItem]) -> list[ItemReward]:
    """Items of inline families (every family but the table's and the pool's), scored here."""
    return [combine(item, score_answer(item.response, item.truth, item.options)) for item in items]


__all__ = ["ItemReward", "PreparedItem", "combine", "finite", "score_inline"]
