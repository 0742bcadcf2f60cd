"""verl (0.9.x): ``compute_score`` for ``reward.custom_reward_function``.

    reward.custom_reward_function.path=pkg://mixed_reward_client.verl
    reward.custom_reward_function.name=compute_score
    +reward.custom_reward_function.reward_kwargs.url=http://rm-a:8000,http://rm-b:8000
    +reward.custom_reward_function.reward_kwargs.model=policy-b   # the service's table for this policy
    +reward.custom_reward_function.reward_kwargs.job=exp2         # this run: fair share, difficulty state

verl's reward loop awaits ``compute_score(data_source, solution_str, ground_truth, extra_info)``
once per sample, about a thousand at a time per worker, all on the worker's event loop. Sending
one HTTP request per sample would waste the server's batching, so concurrent calls are
coalesced: they queue here and go out as one ``POST /score`` when ``max_batch`` samples are
waiting or ``flush_ms`` milliseconds after the first one arrived, whichever comes first.

Each sample is checked and JSON-encoded when it is queued: a sample that cannot be sent (a NaN
ground truth, an object JSON has no form for) fails its own call, naming its data source and
index, and never the batch it would have joined.

A sample whose ``extra_info["prompt_id"]`` is set sends it as the item's ``prompt_id``, which the
service's difficulty posterior (the VADE sampler's statistics) is keyed by. ``model`` and ``job``
are reward kwargs, not per-sample fields: a training run scores with one policy's table and is one
job, so every request of the run carries the same ones.

Every sample returns the same keys, whatever its task type (verl stacks each key across the
batch, across reward workers too, so a key missing for one sample would break the step):

- ``score``, ``accuracy`` and ``format``, all finite. A family's sub-scores (``tiou``,
  ``bmas_forward``...) are not returned: they vary by task, and ``accuracy`` already is the
  family's reward (tIoU times its boundary penalty, the BMAS sum); a math item whose verification
  overran scores accuracy 0, as the service reports it.
- with ``explain=True`` also ``pred``, what the rule read as text ("" when it read nothing: no
  answer word, no box), which verl's validation turns into ``maj@N`` metrics and its rollout dumps
  (``trainer.rollout_data_dir``) keep next to each response; and ``timed_out`` (1.0 when the
  service gave up verifying that sample, else 0.0), whose validation mean is the overrun rate.
If the service cannot be reached after the retries, the call raises and verl's step fails with
that error: a failure is never silently scored 0 unless ``on_failure="zero"`` was set.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from mixed_reward_client._coalesce import Coalescer, coalescer_for
from mixed_reward_client._config import check_on_failure, resolve
from mixed_reward_client._samples import parsed_text
from mixed_reward_client.errors import RewardClientError, ServerUnavailable

log = logging.getLogger("mixed_reward_client.verl")

COMPONENTS = ("accuracy", "format")
__all__ = ["Coalescer", "compute_score", "describe_sample", "task_type_of"]


def describe_sample(data_source: Any, extra_info: Any) -> str:
    """How an error names one sample: its data source and, when verl's dataset has one, its index."""
    where = f"data_source={data_source!r}"
    if isinstance(extra_info, Mapping):
        for key in ("index", "idx", "id", "uid"):
            if extra_info.get(key) is not None:
                value = extra_info[key]
                value = value.item() if hasattr(value, "item") else value
                where += f", extra_info.{key}={value!r}"
                break
    return f"sample ({where})"


def task_type_of(extra_info: Any, data_source: Any, default: str | None) -> str:
    """Per-sample ``extra_info["task_type"]`` wins, then the fixed ``task_type`` reward kwarg, then
    ``data_source`` (the server rejects a data source that is not a task type, naming the valid ones)."""
    if isinstance(extra_info, Mapping) and extra_info.get("task_type") is not None:
        return str(extra_info["task_type"])
    if default:
        return str(default)
    if data_source is None:
        raise RewardClientError("no task type: set extra_info.task_type, reward_kwargs.task_type or data_source")
    return str(data_source)


async def compute_score(
    data_source: Any,
    solution_str: str,
    ground_truth: Any,
    extra_info: Any = None,
    *,
    url: str | list[str] | None = None,
    token: str | None = None,
    task_type: str | None = None,
    format_weight: float | None = None,
    bmas_reduction: str | None = None,
    timeout: float | None = None,
    max_attempts: int | None = None,
    backoff: float | None = None,
    deadline: float | None = None,
    flush_ms: float = 5.0,
    max_batch: int = 1024,
    on_failure: str = "raise",
    model: str | None = None,
    job: str | None = None,
    explain: bool | None = None,
    **_verl_kwargs: Any,
) -> dict[str, float | str]:
    """Score one sample through the shared per-loop batcher. ``model`` (the service's table for
    this policy), ``job`` (this training run) and ``explain`` (add the ``pred`` and ``timed_out``
    keys) default to ``$MIXED_REWARD_MODEL``, ``$MIXED_REWARD_JOB`` and ``$MIXED_REWARD_EXPLAIN``. Extra keyword
    arguments verl passes (``reward_router_address``, ``reward_model_tokenizer``) are accepted
    and ignored."""
    mode = check_on_failure(on_failure)
    if mode == "none":
        raise ValueError("verl needs a number for every sample: on_failure must be 'raise' or 'zero'")
    settings = resolve(
        url,
        token=token,
        timeout=timeout,
        max_attempts=max_attempts,
        backoff=backoff,
        format_weight=format_weight,
        bmas_reduction=bmas_reduction,  # type: ignore[arg-type]
        deadline=deadline,
        model=model,
        job=job,
        explain=explain,
    )
    coalescer = await coalescer_for("verl", settings, flush_ms, max_batch)
    item = {
        "response": solution_str,
        "ground_truth": ground_truth,
        "task_type": task_type_of(extra_info, data_source, task_type),
    }
    if isinstance(extra_info, Mapping) and extra_info.get("prompt_id") is not None:
        prompt_id = extra_info["prompt_id"]  # feeds the service's difficulty posterior (VADE sampler)
        item["prompt_id"] = prompt_id.item() if hasattr(prompt_id, "item") else prompt_id
    try:
        row = await coalescer.score(item, describe_sample(data_source, extra_info))
    except ServerUnavailable as exc:
        if mode == "raise":
            raise
        log.warning("reward service unavailable, scoring this sample 0 because on_failure=%r: %s", mode, exc)
        zero: dict[str, float | str] = {"score": 0.0, **{name: 0.0 for name in COMPONENTS}}
        return {**zero, "pred": "", "timed_out": 0.0} if settings.explain else zero
    scores = {"score": float(row["reward"]), **{name: float(row[name]) for name in COMPONENTS}}
    if not all(math.isfinite(v) for v in scores.values()):
        raise RewardClientError(f"the server returned a non-finite score {scores} for task {item['task_type']}")
    out: dict[str, float | str] = dict(scores)
    if settings.explain:
        out["pred"] = parsed_text(row)
        out["timed_out"] = 1.0 if row.get("timed_out") else 0.0
    return out
