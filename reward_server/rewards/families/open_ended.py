"""``open_ended`` (SPEC §6): BMAS, the bidirectional max-average cosine similarity of the
response's and the truth's token rows in the policy's own input-embedding table.

The engine's batched kernel computes it (``runs = TABLE``): this module holds the family's traits
and how its accuracy is read, so every consumer treats it like any other family.
"""

from __future__ import annotations

from collections.abc import Mapping

from reward_server.rewards.family import RewardFamily, Runs, Score
from reward_server.rewards.options import ResolvedOptions
from reward_server.rewards.profiles import PROFILES, f_measure

FORWARD, BACKWARD = "bmas_forward", "bmas_backward"


class OpenEnded(RewardFamily):
    name = "open_ended"
    aliases = ("open", "caption", "free_form", "bmas")
    summary = ("BMAS: bidirectional max-average cosine similarity of token rows of the policy's own "
               "input-embedding table")
    binary = False
    accuracy_range = (-2.0, 2.0)
    runs = Runs.TABLE
    correct_threshold = 0.75  # on the mean of the two directions, [-1, 1] whatever the reduction
    sub_scores = (FORWARD, BACKWARD)
    sub_score_range = (-1.0, 1.0)

    def range_for(self, options: ResolvedOptions) -> tuple[float, float]:
        return (-2.0, 2.0) if options.bmas_reduction == "sum" else (-1.0, 1.0)

    def is_correct(self, accuracy: float, sub_scores: Mapping[str, float], threshold: float | None = None) -> bool:
        """The *mean* of the two directions (identical texts: 1) against the threshold, so the
        verdict does not depend on the request's reduction."""
        if FORWARD not in sub_scores or BACKWARD not in sub_scores:
            return False
        limit = self.correct_threshold if threshold is None else threshold
        return (sub_scores[FORWARD] + sub_scores[BACKWARD]) / 2.0 >= limit


def bmas_score(forward: float, backward: float, options: ResolvedOptions) -> Score:
    """The accuracy from the kernel's two directional terms under the item's profile and reduction.

    mixed-r1 (the paper): their sum, [-2, 2]; robust: 2 x their F-measure, the same range.
    ``mean`` halves either.
    """
    total = 2.0 * f_measure(forward, backward) if PROFILES[options.profile].weighted else forward + backward
    accuracy = total if options.bmas_reduction == "sum" else total / 2.0
    return Score(accuracy, sub_scores={FORWARD: forward, BACKWARD: backward})
