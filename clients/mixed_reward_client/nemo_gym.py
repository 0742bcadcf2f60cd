"""NeMo Gym (0.7.x; NeMo-RL trains through it): a resources server whose ``/verify`` scores with
the mixed-reward service.

NeMo Gym's agent posts each finished rollout to its resources server's ``/verify``: the dataset
row (``responses_create_params`` and any other fields, here ``ground_truth``/``answer``/
``solution``, ``task_type`` and, optionally, ``prompt_id``) plus the model's ``response``
(``simple_agent``'s run request keeps a row's extra fields, and its verify payload is that request
plus the response); it trains on the ``reward`` of the
reply. This server scores the text of the response's last assistant message, coalescing the
concurrent ``/verify`` calls into batched ``POST /score`` requests (with the row's ``prompt_id``,
which feeds the service's difficulty posterior), and replies, for every rollout:

- ``reward``: the Mixed-R1 reward;
- ``reward_components``: ``{"accuracy": accuracy, "format": format_weight * format}``, which sum to
  ``reward`` exactly (multi-objective trainers such as GDPO normalise each one);
- ``accuracy``, ``format`` (0 or 1), ``task_type``, ``bmas_forward``/``bmas_backward`` (the
  open-ended terms, null for other tasks) and ``timed_out`` (the service gave up verifying: a math
  item past its deadline, accuracy 0) as top-level fields, which NeMo Gym's aggregate metrics
  profile (numbers and booleans; a field a row lacks is left out of its means);
- every other sub-score the rollout's family reports, as a top-level field of its own name
  (temporal grounding: ``tiou``, ``boundary_penalty``), so it is profiled per task too;
- ``parsed``: with ``explain: true``, what the rule read (kept in the rollouts file), else null.

``model`` (the service's table for the policy being trained) and ``job`` (this training run: the
service's fair share and per-job difficulty state) are config fields, defaulting to
``MIXED_REWARD_MODEL`` / ``MIXED_REWARD_JOB``.

In a NeMo Gym checkout, ``resources_servers/mixed_reward/app.py`` is::

    from mixed_reward_client.nemo_gym import MixedRewardResourcesServer

    if __name__ == "__main__":
        MixedRewardResourcesServer.run_webserver()

with ``mixed-reward-client`` in its ``requirements.txt`` and ``reward_url`` (or
``MIXED_REWARD_URL``) in its config (docs/trainers.md has the YAML). When the service cannot be
reached, ``/verify`` fails (``on_failure: raise``); ``mask`` hands NeMo Gym a judge failure instead
(``reward`` 0 with ``mask_sample: true``, ``failure_kind: judge_failed``: the sample is kept out of
training and scores), and ``zero`` scores 0 unmasked - both only when configured.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from fastapi import HTTPException
from nemo_gym.base_resources_server import (
    BaseMultiRewardVerifyResponse,
    BaseResourcesServerConfig,
    BaseVerifyRequest,
    SimpleResourcesServer,
)
from nemo_gym.judge import JudgeError
from pydantic import BaseModel, ConfigDict, PrivateAttr

from mixed_reward_client._coalesce import DEFAULT_FLUSH_MS, DEFAULT_MAX_BATCH, coalescer_for
from mixed_reward_client._config import ClientSettings, resolve
from mixed_reward_client._samples import eos_strings, result_keys, strip_eos, truth_and_task
from mixed_reward_client.client import AsyncRewardClient
from mixed_reward_client.errors import BadRequest, RewardClientError, ServerUnavailable

log = logging.getLogger("mixed_reward_client.nemo_gym")


class MixedRewardResourcesServerConfig(BaseResourcesServerConfig):
    reward_url: str | list[str] | None = None  # default: $MIXED_REWARD_URL
    reward_token: str | None = None  # default: $MIXED_REWARD_TOKEN
    task_type: str | None = None  # for rows without a task_type field
    format_weight: float | None = None  # default: the service's
    bmas_reduction: Literal["sum", "mean"] | None = None
    eos: list[str] | None = None  # trailing end-of-sequence strings to remove
    timeout: float | None = None
    max_attempts: int | None = None
    deadline: float | None = None
    flush_ms: float = DEFAULT_FLUSH_MS
    max_batch: int = DEFAULT_MAX_BATCH
    on_failure: Literal["raise", "mask", "zero"] = "raise"
    model: str | None = None  # the service's table (policy) for open-ended items; default $MIXED_REWARD_MODEL
    job: str | None = None  # this training run, for the service's scheduling and state; default $MIXED_REWARD_JOB
    explain: bool | None = None  # add `parsed` (what the rule read) to every reply; default $MIXED_REWARD_EXPLAIN


class MixedRewardVerifyRequest(BaseVerifyRequest):
    ground_truth: Any = None
    answer: Any = None
    solution: Any = None
    task_type: str | None = None
    # The row's stable prompt id, forwarded as is: the service validates it (string or integer) and
    # a bad one comes back as a 422 naming prompt_id, as from /score.
    prompt_id: Any = None


class MixedRewardVerifyResponse(BaseMultiRewardVerifyResponse):
    # Extra fields allowed: a family's sub-scores (tiou, ...) ride as top-level fields of their own
    # names, which NeMo Gym's metrics profile, without a client release per family.
    model_config = ConfigDict(extra="allow")

    accuracy: float
    format: float
    task_type: str
    bmas_forward: float | None = None
    bmas_backward: float | None = None
    timed_out: bool = False
    parsed: Any = None


def set_fields(body: BaseModel) -> dict[str, Any]:
    """The request fields the verify payload set (NeMo Gym's excluded bookkeeping aside): what the
    row has, as opposed to every field the request model declares."""
    declared = type(body).model_fields
    return {name: getattr(body, name) for name in sorted(body.model_fields_set)
            if name in declared and not declared[name].exclude}


def response_text(body: BaseVerifyRequest) -> str:
    """Text of the last assistant message of the rollout's response ("" when it has none)."""
    messages = [item for item in body.response.output if getattr(item, "type", None) == "message"
                and getattr(item, "role", "assistant") == "assistant"]
    if not messages:
        return ""
    parts = getattr(messages[-1], "content", None) or []
    return "".join(getattr(part, "text", "") or "" for part in parts if getattr(part, "type", None) == "output_text")


class MixedRewardResourcesServer(SimpleResourcesServer):
    config: MixedRewardResourcesServerConfig
    _format_weight: float | None = PrivateAttr(default=None)

    def _settings(self) -> ClientSettings:
        c = self.config
        return resolve(c.reward_url, token=c.reward_token, timeout=c.timeout, max_attempts=c.max_attempts,
                       format_weight=c.format_weight, bmas_reduction=c.bmas_reduction, deadline=c.deadline,
                       model=c.model, job=c.job, explain=c.explain)

    async def _weight(self, settings: ClientSettings) -> float:
        """The format weight the service applies: the configured one, else the service's default."""
        if settings.format_weight is not None:
            return settings.format_weight
        if self._format_weight is None:
            async with AsyncRewardClient(list(settings.urls), **settings.client_kwargs()) as client:
                self._format_weight = float((await client.info())["defaults"]["format_weight"])
        return self._format_weight

    async def verify(self, body: MixedRewardVerifyRequest) -> MixedRewardVerifyResponse:
        settings = self._settings()
        try:
            truth, task = truth_and_task(set_fields(body), self.config.task_type, "the verify request")
        except RewardClientError as exc:
            raise HTTPException(422, detail=str(exc)) from exc
        item = {"response": strip_eos(response_text(body), eos_strings(self.config.eos)), "ground_truth": truth,
                "task_type": task, "prompt_id": body.prompt_id}
        try:
            weight = await self._weight(settings)
            coalescer = await coalescer_for("nemo_gym", settings, self.config.flush_ms, self.config.max_batch)
            scored = result_keys(await coalescer.score(item, f"rollout (task_type={task!r})"))
        except BadRequest as exc:  # the row cannot be scored (an unknown task type, a bad box)
            raise HTTPException(422, detail=str(exc)) from exc
        except ServerUnavailable as exc:
            if self.config.on_failure == "mask":
                raise JudgeError(str(exc)) from exc
            if self.config.on_failure == "raise":
                raise
            log.warning("reward service unavailable, scoring this rollout 0 because on_failure='zero': %s", exc)
            scored = {"reward": 0.0, "accuracy": 0.0, "format": 0.0, "task_type": task, "sub_scores": {}}
            weight = 0.0
        components = {"accuracy": scored["accuracy"], "format": weight * scored["format"]}
        if sum(components.values()) != scored["reward"]:
            raise RewardClientError(f"reward {scored['reward']} is not accuracy + {weight} * format {components}: "
                                    "is format_weight set differently on the service?")
        # The rollout as NeMo Gym's base request has it; the row fields read above (ground truth,
        # task type, prompt id) are not echoed back, as before extra fields were allowed.
        reply = body.model_dump(include=set(BaseVerifyRequest.model_fields))
        # A sub-score named like a field of the reply (a plug-in's choice) must not overwrite it.
        declared = MixedRewardVerifyResponse.model_fields
        subs = {k: v for k, v in scored["sub_scores"].items() if k not in reply and k not in declared}
        fields = {k: scored.get(k) for k in ("reward", "accuracy", "format", "task_type", "bmas_forward",
                                             "bmas_backward", "timed_out", "parsed") if scored.get(k) is not None}
        return MixedRewardVerifyResponse.model_validate({**reply, **subs, **fields, "reward_components": components})
