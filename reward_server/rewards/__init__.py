"""Pure reward rules (SPEC §1-§8, §13, §14): no torch, no HTTP, only text in and numbers out.

What a reward family plug-in needs is importable from here (examples/rewards/exact_match.py)::

    from reward_server.rewards import InvalidGroundTruth, ResolvedOptions, RewardFamily, Runs, Score

Everything else lives in the submodules; importing this package never imports a family's own
dependencies (shapely, scipy, math-verify).
"""

from reward_server.rewards.errors import InvalidGroundTruth
from reward_server.rewards.family import RewardFamily, Runs, Score
from reward_server.rewards.options import ResolvedOptions

__all__ = ["InvalidGroundTruth", "ResolvedOptions", "RewardFamily", "Runs", "Score"]
