"""What a reward family is (SPEC §14): one small interface that every family, built-in or a
user's, implements once, and that every consumer reads instead of naming families.

A family declares its traits as class attributes (its name and aliases, whether the accuracy is
binary, its range, where it runs, its threshold of "correct"), parses a ground truth once (raising
:class:`~reward_server.rewards.errors.InvalidGroundTruth`, a 422 naming the item), may refuse a
truth under the request's options (``check_options``, called by validation), and scores an
answer span against the parsed truth. Routing, validation, the OpenAPI enum, ``/v1/info``, the
metrics' buckets and labels, the difficulty posterior, the offline commands, the OpenRLHF
``scores`` mapping, the dashboard and the docs' table all come from these attributes.

Pure: no torch, no HTTP. A family that needs the policy's embedding table (``runs = TABLE``,
open-ended BMAS) is scored by the engine's kernel; one that may hang (``runs = POOL``, math) runs
in killable worker processes; every other runs inline.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from reward_server.rewards.options import ResolvedOptions


class Runs(str, enum.Enum):
    """Where a family's scorer runs."""

    INLINE = "inline"  # in the scoring worker, microseconds to milliseconds an item
    POOL = "pool"  # in a pool of worker processes under a deadline (may hang: killed and replaced)
    TABLE = "table"  # on the policy's embedding table, in the engine's batched kernel


@dataclass(frozen=True)
class Score:
    """One answer's score. ``parsed`` is the answer as the rule read it (``options.explain``);
    ``sub_scores`` are named parts reported beside the accuracy (finite floats); ``timed_out``
    says that a pooled scorer overran its deadline (the accuracy is then 0)."""

    accuracy: float
    parsed: Any = None
    sub_scores: Mapping[str, float] = field(default_factory=dict)
    timed_out: bool = False


class RewardFamily:
    """Base class of reward families. Subclass it, set the traits, implement ``score`` (and
    ``parse_truth`` unless the truth is plain text); see examples/rewards/exact_match.py."""

    #: canonical wire name (lower case, ``_`` between words) and the other names clients may use
    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    #: one line for the docs' table and ``/v1/info``: what the reward is
    summary: ClassVar[str] = ""
    #: accuracy is 0 or 1 (else continuous within ``accuracy_range``)
    binary: ClassVar[bool] = True
    accuracy_range: ClassVar[tuple[float, float]] = (0.0, 1.0)
    runs: ClassVar[Runs] = Runs.INLINE
    #: a continuous accuracy at or above this counts as a correct rollout (difficulty posterior)
    correct_threshold: ClassVar[float] = 0.5
    #: names of the ``sub_scores`` it reports, each in [0, 1] unless ``sub_score_range`` says otherwise
    sub_scores: ClassVar[tuple[str, ...]] = ()
    sub_score_range: ClassVar[tuple[float, float]] = (0.0, 1.0)
    #: ``pip install`` extra it needs, if any (a missing one is a 422 naming it)
    extra: ClassVar[str | None] = None

    def parse_truth(self, text: str) -> Any:
        """The ground truth's answer span (tags unwrapped, non-empty) parsed once per distinct truth;
        raise InvalidGroundTruth when it cannot be scored against. Default: the text itself."""
        return text

    def score(self, span: str, truth: Any, options: ResolvedOptions) -> Score:
        """The answer span (SPEC §2) against a parsed truth. Model output never raises: garbage
        scores 0."""
        raise NotImplementedError(f"{type(self).__name__} must implement score()")

    def warm_up(self) -> None:
        """Runs once in each worker process that scores this family (``runs = POOL``), before the
        worker takes an item: imports and first-call caches are paid here, never inside an item's
        deadline. Default: nothing."""

    def check_options(self, truth: Any, options: ResolvedOptions) -> None:
        """Whether this parsed truth can be scored under ``options``; raise
        :class:`~reward_server.errors.ItemFieldError` (InvalidGroundTruth) when it cannot.

        ``parse_truth`` sees only the text and ``score`` must never raise, so a truth that is fine
        on its own but unusable with an option (``temporal_grounding`` without a ``duration`` under
        ``tiou_boundary_penalty``) is caught here: validation calls it for every item before any
        is scored, and the client gets a 422 naming the item. Default: every option is fine."""

    # --- derived traits (override only for a range that depends on the options) -----------------

    def range_for(self, options: ResolvedOptions) -> tuple[float, float]:
        """The accuracy's range under ``options``."""
        return self.accuracy_range

    def unit_accuracy(self, accuracy: float, options: ResolvedOptions) -> float:
        """The accuracy mapped linearly onto [0, 1] (OpenRLHF's ``scores``, whose dynamic filter
        compares them with a 0..1 range)."""
        low, high = self.range_for(options)
        return (accuracy - low) / (high - low) if high > low else accuracy

    def is_correct(self, accuracy: float, sub_scores: Mapping[str, float], threshold: float | None = None) -> bool:
        """Whether a rollout counts as a success of its prompt (the difficulty posterior). Binary
        families: accuracy 1. Continuous ones: accuracy >= the threshold."""
        if self.binary:
            return accuracy >= 0.5
        return accuracy >= (self.correct_threshold if threshold is None else threshold)

    def info(self) -> dict[str, Any]:
        """What ``/v1/info`` publishes about the family."""
        return {
            "aliases": list(self.aliases), "summary": self.summary, "binary": self.binary,
            "accuracy_range": list(self.accuracy_range), "runs": self.runs.value,
            "sub_scores": list(self.sub_scores), **({"extra": self.extra} if self.extra else {}),
        }

    def __repr__(self) -> str:
        return f"<reward family {self.name}>"


__all__ = ["RewardFamily", "Runs", "Score"]
