"""verifiers (0.4.x, prime-rl's environments): a task reward backed by the mixed-reward service.

verifiers scores a rollout with its task's ``@vf.reward`` functions, each called with the
parameters it names (``task``: the row's ``TaskData``; ``trace``: the rollout), and a reward can be
plugged in by import path without code (``--env.taskset.task.rewards.mixed_reward.fn
mixed_reward_client.verifiers:mixed_reward``, configured by ``MIXED_REWARD_URL``), or built with
options by :func:`mixed_reward_func` and returned from a task's ``@vf.reward`` method.

The reward is the Mixed-R1 reward of ``trace.last_reply`` (the final assistant reply) for the
row's ``ground_truth``/``answer``/``solution`` and ``task_type``, sent with the row's ``prompt_id``
(a declared or extra task-data field; it feeds the service's difficulty posterior); concurrent
rollouts on verifiers' event loop are coalesced into batched requests. Every trace also gets the same metrics,
``mixed_reward/accuracy`` and ``mixed_reward/format`` (verifiers' metrics are one float per name
for every trace, so the open-ended BMAS terms, which other tasks lack, stay inside accuracy). A
failure raises, which verifiers records as the trace's task error; ``on_failure="zero"`` scores 0
instead, only when asked.

``model`` (the service's table for the policy being trained) and ``job`` (this training run) are
:func:`mixed_reward_func` options, defaulting to ``MIXED_REWARD_MODEL`` / ``MIXED_REWARD_JOB``
(which is how the import-path form is pointed). With ``explain=True`` (``MIXED_REWARD_EXPLAIN=1``)
each trace's ``info`` (verifiers' per-trace scratch space, saved with the trace) gets
``info["mixed_reward"] = {"parsed": ..., "timed_out": ..., "sub_scores": {...}}``: what the rule
read, whether the service gave up verifying (math past its deadline: accuracy 0), and the family's
sub-scores (``tiou``...). The metrics stay the two above for every task type: a sub-score exists
for some families only, and its family's accuracy already carries it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from mixed_reward_client._coalesce import DEFAULT_FLUSH_MS, DEFAULT_MAX_BATCH, coalescer_for
from mixed_reward_client._config import check_on_failure, resolve
from mixed_reward_client._samples import PROMPT_ID_KEY, eos_strings, result_keys, strip_eos, truth_and_task
from mixed_reward_client.errors import ServerUnavailable

log = logging.getLogger("mixed_reward_client.verifiers")
METRICS = ("accuracy", "format")


def task_fields(task: Any) -> dict[str, Any]:
    """A task's row as a dict: a TaskData subclass's fields and any extra fields it allows."""
    if isinstance(task, Mapping):
        return dict(task)
    fields = dict(task.model_dump()) if hasattr(task, "model_dump") else dict(vars(task))
    return {**fields, **(getattr(task, "model_extra", None) or {})}


class MixedRewardRubric:
    """``async (task, trace) -> float``: the reward, with ``accuracy``/``format`` as trace metrics."""

    def __init__(
        self,
        url: str | Sequence[str] | None = None,
        *,
        task_type: str | None = None,
        eos: str | Sequence[str] | None = None,
        flush_ms: float = DEFAULT_FLUSH_MS,
        max_batch: int = DEFAULT_MAX_BATCH,
        on_failure: str = "raise",
        name: str = "mixed_reward",
        **options: Any,
    ) -> None:
        self.on_failure = check_on_failure(on_failure)
        if self.on_failure == "none":
            raise ValueError("verifiers needs a number for every rollout: on_failure must be 'raise' or 'zero'")
        self.__name__ = name
        self._url = url
        self._options = options
        self.task_type = task_type
        self.eos = eos_strings(eos)
        self.flush_ms = flush_ms
        self.max_batch = max_batch
        if url is not None:
            resolve(url, **options)  # a malformed URL fails here, not mid-training

    async def __call__(self, task: Any, trace: Any) -> float:
        fields = task_fields(task)
        truth, task_type = truth_and_task(fields, self.task_type, "the verifiers task")
        item = {"response": strip_eos(trace.last_reply, self.eos), "ground_truth": truth,
                "task_type": task_type, "prompt_id": fields.get(PROMPT_ID_KEY)}
        settings = resolve(self._url, **self._options)
        coalescer = await coalescer_for("verifiers", settings, self.flush_ms, self.max_batch)
        try:
            keys = result_keys(await coalescer.score(item, f"rollout (task_type={task_type!r})"))
        except ServerUnavailable as exc:
            if self.on_failure == "raise":
                raise
            log.warning("reward service unavailable, scoring this rollout 0 because on_failure='zero': %s", exc)
            keys = {"reward": 0.0, "accuracy": 0.0, "format": 0.0}
        trace.record_metrics({f"{self.__name__}/{name}": keys[name] for name in METRICS})
        if settings.explain and "sub_scores" in keys:
            trace.info[self.__name__] = {"parsed": keys["parsed"], "timed_out": keys["timed_out"],
                                         "sub_scores": keys["sub_scores"]}
        return keys["reward"]


def mixed_reward_func(url: str | Sequence[str] | None = None, **options: Any) -> MixedRewardRubric:
    """Factory: ``url`` (default ``$MIXED_REWARD_URL``), ``token``, ``task_type``, ``eos``,
    ``format_weight``, ``bmas_reduction``, ``timeout``, ``max_attempts``, ``deadline``,
    ``flush_ms``, ``max_batch``, ``on_failure`` ("raise" | "zero"), ``name``, ``model`` (the
    service's table), ``job`` (this training run), ``explain`` (what each rule read, in
    ``trace.info``)."""
    return MixedRewardRubric(url, **options)


# For `--env.taskset.task.rewards.mixed_reward.fn mixed_reward_client.verifiers:mixed_reward`.
mixed_reward = MixedRewardRubric()
