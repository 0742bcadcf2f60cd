"""``mcq`` (SPEC §3): the option the span picks (a letter, or the option's text) equals the
truth's; a span listing several options with no decisive marker scores 0."""

from __future__ import annotations

from reward_server.rewards.errors import InvalidGroundTruth
from reward_server.rewards.family import RewardFamily, Score
from reward_server.rewards.matching import McqTruth, extract_option_letter, mcq_reward
from reward_server.rewards.options import ResolvedOptions
from reward_server.rewards.textnorm import normalise_text, preview


class MultipleChoice(RewardFamily):
    name = "mcq"
    aliases = ("multiple_choice", "choice")
    summary = "matching: the answer's option letter (or option text) equals the truth's"

    def parse_truth(self, text: str) -> McqTruth:
        parsed = McqTruth.parse(text)
        if not parsed.full_text:
            raise InvalidGroundTruth(f"multiple-choice ground truth has no letter or option text: {preview(text)}")
        return parsed

    def score(self, span: str, truth: McqTruth, options: ResolvedOptions) -> Score:
        accuracy = mcq_reward(span, truth)
        parsed = (extract_option_letter(span) or normalise_text(span) or None) if options.explain else None
        return Score(accuracy, parsed=parsed)
