"""Client for the mixed-reward service (POST /score), with adapters for verl, OpenRLHF and TRL.

Public surface::

    RewardClient, AsyncRewardClient   sync and async twins: retries, failover, batch splitting
    RetryPolicy                       how hard to try before giving up
    ScoreBatch                        what ``score()`` returns
    RewardClientError                 base of every error raised here
    BadRequest                        4xx from the server (never retried), with its error body
    ServerUnavailable                 every retry on every URL failed

Trainer adapters live in submodules so that importing this package stays cheap:
``mixed_reward_client.verl.compute_score``, ``mixed_reward_client.trl.mixed_reward_func``,
``mixed_reward_client.openrlhf.reward_func``, ``mixed_reward_client.areal.reward_fn`` /
``AsyncMixedReward``, ``mixed_reward_client.nemo_gym.MixedRewardResourcesServer`` and
``mixed_reward_client.verifiers.mixed_reward``. slime needs no client code (``POST /slime``).
"""

from mixed_reward_client._batching import ScoreBatch
from mixed_reward_client._policy import RetryPolicy
from mixed_reward_client.client import AsyncRewardClient, RewardClient
from mixed_reward_client.errors import BadRequest, RewardClientError, ServerUnavailable

__version__ = "0.1.0"

__all__ = [
    "AsyncRewardClient",
    "BadRequest",
    "RetryPolicy",
    "RewardClient",
    "RewardClientError",
    "ScoreBatch",
    "ServerUnavailable",
    "__version__",
]
