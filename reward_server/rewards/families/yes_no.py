"""``yes_no`` (SPEC §3): the first whole word yes or no of the span equals the truth's; a hedge,
a negation or no such word scores 0."""

from __future__ import annotations

from reward_server.rewards.errors import InvalidGroundTruth
from reward_server.rewards.family import RewardFamily, Score
from reward_server.rewards.matching import extract_yes_no
from reward_server.rewards.options import ResolvedOptions
from reward_server.rewards.textnorm import preview


class YesNo(RewardFamily):
    name = "yes_no"
    aliases = ("yorn", "binary")
    summary = "matching: the answer's yes/no word equals the truth's"

    def parse_truth(self, text: str) -> str:
        word = extract_yes_no(text)
        if word is None:
            raise InvalidGroundTruth(
                "yes/no ground truth must answer with one whole word 'yes' or 'no' "
                f"(not none, not both, not negated): {preview(text)}"
            )
        return word

    def score(self, span: str, truth: str, options: ResolvedOptions) -> Score:
        word = extract_yes_no(span)
        return Score(1.0 if word == truth else 0.0, parsed=word)
