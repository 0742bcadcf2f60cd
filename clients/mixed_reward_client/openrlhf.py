"""OpenRLHF (0.11.x): the Python-file alternative to ``--reward.remote_url http://host:port/get_reward``.

OpenRLHF treats a ``--reward.remote_url`` ending in ``.py`` as a file defining
``reward_func(queries, prompts, labels)``, loads it by path and calls it in a thread once per
sample. This module is such a file:

    export MIXED_REWARD_URL=http://rm-a:8000,http://rm-b:8000
    --reward.remote_url $(python -c "import mixed_reward_client.openrlhf as m; print(m.__file__)")

Why use it rather than the plain URL: OpenRLHF's own HTTP path retries one URL 5 times, 1 s apart,
and round-robins several URLs without failover; this file fails over to the next URL, backs off,
and can send a bearer token. The prompt/end-of-sequence handling is the server's (``/get_reward``),
so both paths score the same text. Extra settings: ``MIXED_REWARD_EOS`` (end-of-sequence strings,
comma-separated), ``MIXED_REWARD_TASK_TYPE`` (task type for labels that carry none), and
``MIXED_REWARD_MODEL`` / ``MIXED_REWARD_JOB`` (the service's table for this policy, this training
run), which this file sends as ``?model=`` / ``?job=``, as the plain URL would carry them
(``--reward.remote_url "http://host:8000/get_reward?model=policy-b&job=exp2"``).

Loaded by path, this file must use absolute imports only.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

from mixed_reward_client._config import resolve
from mixed_reward_client.client import RewardClient

ENV_EOS = "MIXED_REWARD_EOS"
ENV_TASK_TYPE = "MIXED_REWARD_TASK_TYPE"

_lock = threading.Lock()
_client: RewardClient | None = None


def _shared_client() -> RewardClient:
    """One client (one connection pool) for every thread OpenRLHF calls us from."""
    global _client
    with _lock:
        if _client is None:
            settings = resolve()
            _client = RewardClient(list(settings.urls), **settings.client_kwargs())
        return _client


def reward_func(
    queries: Sequence[str], prompts: Sequence[str], labels: Sequence[Any], **kwargs: Any
) -> dict[str, Any]:
    """``{"rewards": [...], "scores": [...], "extra_logs": {"accuracy": [...], "format": [...]}}``:
    ``rewards`` is the Mixed-R1 reward, ``scores`` the accuracy (what OpenRLHF's dynamic filtering
    reads). Raises :class:`~mixed_reward_client.errors.RewardClientError` when the service fails."""
    eos = os.environ.get(ENV_EOS)
    return _shared_client().get_reward(
        queries,
        prompts,
        labels,
        eos=eos.split(",") if eos else None,
        task_type=os.environ.get(ENV_TASK_TYPE) or None,
    )
