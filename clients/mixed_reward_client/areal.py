"""AReaL (1.0.x): reward functions for its RLVR workflows.

AReaL calls ``reward_fn(prompt, completions, prompt_ids, completion_ids, **data)`` once per
sample, where ``data`` is the dataset row, and trains on the float it returns. Two ways in:

1. ``reward_fn`` (zero lines of code: ``RLVRWorkflow(reward_fn="mixed_reward_client.areal.reward_fn",
   ...)`` with ``MIXED_REWARD_URL`` set). AReaL's ``AsyncRewardWrapper`` runs it in a
   ``ProcessPoolExecutor``, where each worker process runs one call at a time, so these calls
   cannot be coalesced: each is one ``POST /score`` of one sample. The wrapper waits 15 s per
   attempt and, after its last attempt times out, returns 0 - so this function gives up (raises
   :class:`~mixed_reward_client.errors.ServerUnavailable`) after ``MIXED_REWARD_DEADLINE``
   seconds, 12 by default, which AReaL logs and raises instead of scoring 0.
2. ``AsyncMixedReward`` (one line: ``workflow.async_reward_fn = AsyncMixedReward()``): the same
   call signature, awaited on AReaL's rollout event loop instead of in the process pool, so
   concurrent episodes are coalesced into batched requests as the verl plug-in does.

Both read the ground truth from the row's ``ground_truth``, ``answer`` or ``solution``, the task
type from its ``task_type`` (else ``MIXED_REWARD_TASK_TYPE``) and the stable prompt id that feeds
the service's difficulty posterior from its ``prompt_id`` (not the ``prompt_ids`` argument, which
is the prompt's token ids), remove the end-of-sequence text
AReaL's ``tokenizer.decode`` leaves on the completion, and return the Mixed-R1 reward. AReaL keeps
one float per sample; ``AsyncMixedReward`` also records each sample's ``mixed_reward/accuracy`` and
``mixed_reward/format`` in AReaL's stats tracker, next to the ``reward`` the workflow records (the
process-pool ``reward_fn`` cannot: its tracker is in another process). A failure raises; ``on_failure="zero"`` (or ``MIXED_REWARD_ON_FAILURE=zero``) scores 0
with a warning instead, only when asked.

``model`` (the service's table for the policy being trained) and ``job`` (this training run: the
service's fair share and per-job difficulty state) are ``AsyncMixedReward(model=..., job=...)``
arguments, or ``MIXED_REWARD_MODEL`` / ``MIXED_REWARD_JOB`` for both forms. Every task type is
scored the same way, the new families (math, temporal grounding, ...) included: AReaL trains on
the reward, and a sub-score (``tiou``) or a verification the service gave up on (accuracy 0) does
not change what it gets. ``explain`` is not offered: AReaL keeps one float per sample and scalar
statistics, with no place for what a rule read.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from typing import Any

from mixed_reward_client._coalesce import DEFAULT_FLUSH_MS, DEFAULT_MAX_BATCH, coalescer_for
from mixed_reward_client._config import ClientSettings, check_on_failure, resolve
from mixed_reward_client._samples import PROMPT_ID_KEY, eos_strings, result_keys, strip_eos, truth_and_task
from mixed_reward_client.client import RewardClient
from mixed_reward_client.errors import ServerUnavailable

log = logging.getLogger("mixed_reward_client.areal")

AREAL_REWARD_TIMEOUT = 15.0  # AsyncRewardWrapper's default timeout_seconds
DEFAULT_DEADLINE = 12.0  # give up (and raise) before AReaL's wrapper times out and returns 0
ENV_ON_FAILURE = "MIXED_REWARD_ON_FAILURE"

_lock = threading.Lock()
_clients: dict[tuple[int, ClientSettings], RewardClient] = {}
_warned: set[ClientSettings] = set()


def _settings(url: str | Sequence[str] | None = None, **options: Any) -> ClientSettings:
    deadline = options.pop("deadline", None)
    if deadline is None and "MIXED_REWARD_DEADLINE" not in os.environ:
        deadline = DEFAULT_DEADLINE
    settings = resolve(url, deadline=deadline, **options)
    if (settings.deadline is None or settings.deadline >= AREAL_REWARD_TIMEOUT) and settings not in _warned:
        _warned.add(settings)
        log.warning("deadline %ss is not below AReaL's %ss reward timeout: a slow service would be scored 0 "
                    "by AReaL's wrapper instead of failing", settings.deadline, AREAL_REWARD_TIMEOUT)
    return settings


def _client(settings: ClientSettings) -> RewardClient:
    """One client per worker process: AReaL's pool forks workers, and a connection pool must not
    be shared across a fork."""
    key = (os.getpid(), settings)
    with _lock:
        if key not in _clients:
            _clients[key] = RewardClient(list(settings.urls), **settings.client_kwargs())
        return _clients[key]


def _item(completions: Any, data: dict[str, Any], task_type: str | None, eos: Sequence[str]) -> dict[str, Any]:
    """The /score item of one AReaL sample; ``data`` is the dataset row AReaL passes as ``**data``."""
    truth, task = truth_and_task(data, task_type, "the AReaL dataset row")
    return {"response": strip_eos(str(completions), eos), "ground_truth": truth, "task_type": task,
            "prompt_id": data.get(PROMPT_ID_KEY)}


def reward_fn(prompt: str, completions: str, prompt_ids: Sequence[int], completion_ids: Sequence[int],
              **data: Any) -> float:
    """AReaL's reward function signature, configured from the environment (``MIXED_REWARD_URL``,
    ``MIXED_REWARD_TOKEN``, ``MIXED_REWARD_TASK_TYPE``, ``MIXED_REWARD_EOS``, ``MIXED_REWARD_DEADLINE``,
    ``MIXED_REWARD_ON_FAILURE``): module-level so that AReaL's process pool can pickle it."""
    mode = check_on_failure(os.environ.get(ENV_ON_FAILURE, "raise"))
    settings = _settings()
    item = _item(completions, data, None, eos_strings())
    try:
        batch = _client(settings).score([item])
    except ServerUnavailable as exc:
        if mode != "zero":
            raise
        log.warning("reward service unavailable, scoring this sample 0 because %s=zero: %s", ENV_ON_FAILURE, exc)
        return 0.0
    return result_keys(batch.results[0])["reward"]


class AsyncMixedReward:
    """Drop-in for an AReaL workflow's ``async_reward_fn``: concurrent calls on the rollout event
    loop are coalesced into batched requests. Options as for the other adapters: ``url`` (default
    ``$MIXED_REWARD_URL``), ``token``, ``task_type``, ``eos``, ``format_weight``, ``bmas_reduction``,
    ``timeout``, ``max_attempts``, ``deadline``, ``flush_ms``, ``max_batch``, ``on_failure``,
    ``model`` and ``job`` (default ``$MIXED_REWARD_MODEL``, ``$MIXED_REWARD_JOB``)."""

    def __init__(
        self,
        url: str | Sequence[str] | None = None,
        *,
        task_type: str | None = None,
        eos: str | Sequence[str] | None = None,
        flush_ms: float = DEFAULT_FLUSH_MS,
        max_batch: int = DEFAULT_MAX_BATCH,
        on_failure: str = "raise",
        **options: Any,
    ) -> None:
        self.on_failure = check_on_failure(on_failure)
        if self.on_failure == "none":
            raise ValueError("AReaL needs a number for every sample: on_failure must be 'raise' or 'zero'")
        if options.get("explain"):
            raise ValueError("explain has nowhere to go in AReaL, which keeps one float per sample; "
                             "use RewardClient(..., explain=True) to see what each rule read")
        self._url = url
        self._options = options
        self.task_type = task_type
        self.eos = eos_strings(eos)
        self.flush_ms = flush_ms
        self.max_batch = max_batch
        if url is not None:
            _settings(url, **dict(options))  # a malformed URL fails here, not mid-training

    async def __call__(self, prompt: str, completions: str, prompt_ids: Sequence[int],
                       completion_ids: Sequence[int], **data: Any) -> float:
        settings = _settings(self._url, **dict(self._options))
        coalescer = await coalescer_for("areal", settings, self.flush_ms, self.max_batch)
        item = _item(completions, data, self.task_type, self.eos)
        try:
            row = await coalescer.score(item, f"sample (task_type={item['task_type']!r})")
        except ServerUnavailable as exc:
            if self.on_failure == "raise":
                raise
            log.warning("reward service unavailable, scoring this sample 0 because on_failure='zero': %s", exc)
            return 0.0
        keys = result_keys(row)
        _track(keys)
        return keys["reward"]


def _track(keys: dict[str, Any]) -> None:
    """The components in AReaL's stats tracker, in the scope the workflow records ``reward`` in."""
    from areal import workflow_context
    from areal.utils import stats_tracker

    stats_tracker.get(workflow_context.stat_scope()).scalar(
        **{f"mixed_reward/{name}": keys[name] for name in ("accuracy", "format")}
    )
