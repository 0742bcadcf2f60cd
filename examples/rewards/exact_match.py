"""A reward family of your own, as a plug-in: ``exact_match``.

Binary: 1 when the answer span equals the ground truth after case folding and whitespace
collapsing, else 0. Start a server with it:

    reward-server serve --rewards-module examples/rewards/exact_match.py

and send ``"task_type": "exact_match"`` (or ``"em"``). It gets everything a built-in family gets:
the answer span (SPEC §2: think blocks and answer tags handled for you), the format reward,
``options.explain``, metrics, the difficulty posterior, ``/v1/info`` and the OpenAPI enum. To ship
it in a package instead, declare an entry point::

    [project.entry-points."mixed_reward.rewards"]
    exact_match = "my_package.exact_match:ExactMatch"
"""

from __future__ import annotations

from reward_server.rewards import InvalidGroundTruth, ResolvedOptions, RewardFamily, Score


def fold(text: str) -> str:
    """Case folded, runs of whitespace collapsed to one space, ends stripped."""
    return " ".join(text.casefold().split())


class ExactMatch(RewardFamily):
    name = "exact_match"
    aliases = ("em",)
    summary = "exact match: the answer equals the truth after case folding and whitespace collapsing"
    binary = True

    def parse_truth(self, text: str) -> str:
        folded = fold(text)
        if not folded:
            raise InvalidGroundTruth("exact_match ground truth is only whitespace")
        return folded

    def score(self, span: str, truth: str, options: ResolvedOptions) -> Score:
        answer = fold(span)
        return Score(1.0 if answer == truth else 0.0, parsed=answer)
