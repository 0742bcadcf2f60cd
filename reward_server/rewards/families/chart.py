"""``chart`` (SPEC §4): one number parsed from the span within 1 % of the truth's (either reading
of a percentage); a non-numeric truth falls back to normalised exact match."""

from __future__ import annotations

from reward_server.rewards.chart import ChartTruth, chart_reward, parse_number
from reward_server.rewards.errors import InvalidGroundTruth
from reward_server.rewards.family import RewardFamily, Score
from reward_server.rewards.options import ResolvedOptions
from reward_server.rewards.textnorm import normalise_text, preview


class Chart(RewardFamily):
    name = "chart"
    aliases = ("numeric", "numerical", "chartqa", "doc", "ocr_number")
    summary = "numeric: one number parsed from the answer within 1 % of the truth"

    def parse_truth(self, text: str) -> ChartTruth:
        parsed = ChartTruth.parse(text)
        if parsed.number is None and not parsed.text:
            raise InvalidGroundTruth(f"chart ground truth has no number or text: {preview(text)}")
        return parsed

    def score(self, span: str, truth: ChartTruth, options: ResolvedOptions) -> Score:
        accuracy = chart_reward(span, truth)
        parsed = None
        if options.explain:
            number = parse_number(span) if truth.number is not None else None
            parsed = number.value if number is not None else (normalise_text(span) or None)
        return Score(accuracy, parsed=parsed)
