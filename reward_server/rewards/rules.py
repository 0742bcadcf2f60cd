"""Parse a ground truth once, then score many responses against it, whatever the family.

A GRPO group shares one ground truth across many responses, so the truth is validated and parsed
once into a :class:`PreparedTruth` (the caller caches it) and each response costs only its own
extraction. Only the ground truth may raise (it is the client's); a response is model output and
always gets a finite score, garbage included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from reward_server.rewards.errors import InvalidGroundTruth
from reward_server.rewards.family import RewardFamily, Runs, Score
from reward_server.rewards.options import ResolvedOptions
from reward_server.rewards.registry import FamilyRegistry, resolve_family
from reward_server.rewards.spans import answer_span


@dataclass(frozen=True)
class PreparedTruth:
    """A validated ground truth. ``text`` is its unwrapped answer span (what BMAS embeds and what
    a pooled scorer receives); ``parsed`` is what the family's ``parse_truth`` made of it."""

    family: RewardFamily
    text: str
    parsed: Any = None

    @property
    def task(self) -> str:
        """The canonical task type (the family's name)."""
        return self.family.name


def prepare_ground_truth(
    family: RewardFamily | str, ground_truth: str, registry: FamilyRegistry | None = None
) -> PreparedTruth:
    """Validate and parse one ground truth for ``family`` (a family or a task type name);
    raises :class:`InvalidGroundTruth` (or UnknownTaskType for a name)."""
    family = resolve_family(family, registry)
    if not isinstance(ground_truth, str):
        raise InvalidGroundTruth(f"ground truth must be a string, got {type(ground_truth).__name__}")
    text = answer_span(ground_truth)
    if not text:
        raise InvalidGroundTruth(
            "ground truth is empty" + (" once <answer>/<think> tags are unwrapped" if ground_truth.strip() else "")
        )
    return PreparedTruth(family=family, text=text, parsed=family.parse_truth(text))


def score_answer(response: str, truth: PreparedTruth, options: ResolvedOptions) -> Score:
    """The accuracy of one response for an inline family: its answer span (SPEC §2) scored by the
    family. Raises ``ValueError`` only for a family that is not scored inline (programming error)."""
    if truth.family.runs is not Runs.INLINE:
        raise ValueError(f"{truth.family.name} is scored {truth.family.runs.value}, not inline")
    return truth.family.score(answer_span(response), truth.parsed, options)


__all__ = ["PreparedTruth", "prepare_ground_truth", "score_answer"]
