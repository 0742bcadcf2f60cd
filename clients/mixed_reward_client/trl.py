"""TRL (1.x): an async reward function for ``GRPOTrainer(reward_funcs=[...])``.

    from mixed_reward_client.trl import mixed_reward_func
    trainer = GRPOTrainer(..., reward_funcs=[mixed_reward_func("http://rm-a:8000,http://rm-b:8000")])

or, with no code (``trl grpo`` CLI / YAML), ``--reward_funcs mixed_reward_client.trl.mixed_reward``
plus ``MIXED_REWARD_URL`` in the environment.

TRL calls ``fn(prompts=..., completions=..., completion_ids=..., **columns, trainer_state=...,
log_extra=..., log_metric=...)`` with one entry per completion, and runs async reward functions
on its own event loop, concurrently with the other reward functions. The dataset needs a
``task_type`` column (or a fixed ``task_type=``) and a ``ground_truth`` column (``solution`` and
``answer`` are accepted too). Conversational completions (lists of chat messages) are scored on
the text of their last assistant message. A ``prompt_id`` column (``prompt_id_key=``), when the
dataset has one, is sent with each completion so the service's difficulty posterior (VADE sampler)
learns from it; rows whose value is None are sent without one.

``model=`` names the service's table for the policy being trained and ``job=`` the training run
(the service's fair share and per-job difficulty state); both default to ``MIXED_REWARD_MODEL``
and ``MIXED_REWARD_JOB``, so the CLI instance below can be pointed too.

What is logged, through TRL's ``log_extra`` (columns of the completions table, one value per
completion) and ``log_metric`` (scalars averaged per logging step) hooks:

- always: columns ``<name>/accuracy``, ``<name>/format``, ``<name>/task_type``; metrics
  ``<name>/accuracy``, ``<name>/format``, ``<name>/accuracy/<task_type>`` and
  ``<name>/zero_variance_groups``;
- with ``explain=True`` (``MIXED_REWARD_EXPLAIN=1``), as TRL's own ``accuracy_reward`` logs
  ``gold_parsed``/``answer_parsed``: column ``<name>/parsed``, what the rule read as text ("" when
  it read nothing), and ``<name>/timed_out`` (the service gave up verifying: accuracy 0); metrics
  ``<name>/timed_out`` (the fraction of completions) and ``<name>/<sub_score>`` for each sub-score
  a family reports (``tiou``, ``boundary_penalty``, ``bmas_forward``...), averaged over the
  completions that carry it, as ``accuracy/<task_type>`` is. Every column is written on every
  call, so the table's columns stay the same length step after step.

A failure raises (TRL stops the step with the error); ``on_failure="none"`` returns None per
completion instead, which TRL turns into NaN and, when every reward function is None for a row,
into a reward of 0 - so it is opt-in only.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from mixed_reward_client._config import check_on_failure, per_loop, resolve
from mixed_reward_client._samples import parsed_text, sub_scores_of
from mixed_reward_client.client import AsyncRewardClient
from mixed_reward_client.errors import RewardClientError, ServerUnavailable

log = logging.getLogger("mixed_reward_client.trl")

GROUND_TRUTH_FALLBACKS = ("ground_truth", "solution", "answer")


def completion_text(completion: Any) -> str:
    """Plain text of a completion: a string as is; for chat messages, the content of the last
    assistant message (text parts joined when the content is a list of parts)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if isinstance(completion, Sequence):
        messages = [m for m in completion if isinstance(m, dict)]
        assistant = [m for m in messages if m.get("role", "assistant") == "assistant"] or messages
        if assistant:
            return _content_text(assistant[-1].get("content"))
    raise RewardClientError(f"cannot read a completion of type {type(completion).__name__}")


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and part.get("type", "text") == "text":
                parts.append(str(part.get("text", "")))
        return "".join(parts)
    return str(content)


IMAGE_COLUMNS = ("image", "images")


def _fingerprint(value: Any) -> Any:
    """A comparable stand-in for a prompt or an image: equal content, equal fingerprint, also for
    two PIL images or arrays decoded separately from the same dataset row."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (bytes, bytearray)):
        return ("bytes", hashlib.sha1(value).hexdigest())
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _fingerprint(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_fingerprint(v) for v in value)
    if hasattr(value, "tobytes"):  # PIL images, numpy arrays, tensors
        shape = getattr(value, "size", None), getattr(value, "shape", None), getattr(value, "mode", None)
        with contextlib.suppress(Exception):  # a tobytes() that fails: the repr below
            return ("array", repr(shape), hashlib.sha1(value.tobytes()).hexdigest())
    return repr(value)


def _group_ids(prompts: Sequence[Any], *columns: Sequence[Any]) -> list[int]:
    """GRPO group of each completion. TRL places a prompt's ``num_generations`` completions
    consecutively, so a group is a run of consecutive rows with an equal prompt and equal
    ``columns`` (the images, for multimodal rows): two rows that ask the same question about
    different images, or the same prompt drawn twice in a batch but not adjacent, are different
    groups. (Two adjacent draws of an identical row cannot be told apart and form one group.)"""
    ids: list[int] = []
    previous: Any = None
    for index, prompt in enumerate(prompts):
        key = (_fingerprint(prompt), *(_fingerprint(column[index]) for column in columns))
        if not ids:
            ids.append(0)
        else:
            ids.append(ids[-1] if key == previous else ids[-1] + 1)
        previous = key
    return ids


class MixedReward:
    """The reward function object TRL calls. Build it with :func:`mixed_reward_func`."""

    def __init__(
        self,
        url: str | Sequence[str] | None = None,
        *,
        token: str | None = None,
        task_type: str | None = None,
        task_type_key: str = "task_type",
        ground_truth_key: str = "ground_truth",
        prompt_id_key: str = "prompt_id",
        format_weight: float | None = None,
        bmas_reduction: str | None = None,
        timeout: float | None = None,
        max_attempts: int | None = None,
        backoff: float | None = None,
        deadline: float | None = None,
        on_failure: str = "raise",
        name: str = "mixed_reward",
        model: str | None = None,
        job: str | None = None,
        explain: bool | None = None,
    ) -> None:
        self.__name__ = name  # TRL names the reward (logs, metrics) after this
        self._config: dict[str, Any] = {
            "token": token, "timeout": timeout, "max_attempts": max_attempts, "backoff": backoff,
            "format_weight": format_weight, "bmas_reduction": bmas_reduction, "deadline": deadline,
            "model": model, "job": job, "explain": explain,
        }
        self._url = url
        self.task_type = task_type
        self.task_type_key = task_type_key
        self.ground_truth_key = ground_truth_key
        self.prompt_id_key = prompt_id_key
        self.on_failure = check_on_failure(on_failure)
        if url is not None:
            resolve(url, **self._config)  # fail at construction on a malformed URL, not mid-training

    async def _client(self) -> tuple[AsyncRewardClient, bool]:
        """The running loop's client for this configuration, and whether it explains."""
        settings = resolve(self._url, **self._config)  # type: ignore[arg-type]
        client = await per_loop(
            ("trl", settings), lambda: AsyncRewardClient(list(settings.urls), **settings.client_kwargs())
        )
        return client, settings.explain

    def _column(self, kwargs: dict[str, Any], count: int) -> tuple[list[Any], list[str]]:
        truth_keys = (self.ground_truth_key, *[k for k in GROUND_TRUTH_FALLBACKS if k != self.ground_truth_key])
        truth_key = next((k for k in truth_keys if kwargs.get(k) is not None), None)
        if truth_key is None:
            columns = sorted(k for k in kwargs if k not in ("trainer_state", "log_extra", "log_metric"))
            raise RewardClientError(
                f"no ground-truth column: the dataset needs one of {list(truth_keys)}; it has {columns}"
            )
        if kwargs.get(self.task_type_key) is not None:
            tasks = [str(t) for t in kwargs[self.task_type_key]]
        elif self.task_type:
            tasks = [self.task_type] * count
        else:
            raise RewardClientError(
                f"no task type: add a {self.task_type_key!r} column or pass task_type= to mixed_reward_func"
            )
        return list(kwargs[truth_key]), tasks

    async def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        completion_ids: Sequence[Any] | None = None,
        **kwargs: Any,
    ) -> list[float | None]:
        truths, tasks = self._column(kwargs, len(completions))
        images = [kwargs[c] for c in IMAGE_COLUMNS if kwargs.get(c) is not None and len(kwargs[c]) == len(prompts)]
        groups = _group_ids(prompts, *images) if len(prompts) == len(completions) else [None] * len(completions)
        prompt_ids = kwargs.get(self.prompt_id_key)
        if prompt_ids is None:
            prompt_ids = [None] * len(completions)
        items = [
            {"response": completion_text(c), "ground_truth": gt, "task_type": task, "group_id": gid,
             "prompt_id": pid}
            for c, gt, task, gid, pid in zip(completions, truths, tasks, groups, prompt_ids)
        ]
        try:
            client, explain = await self._client()
            batch = await client.score(items)
        except ServerUnavailable as exc:
            if self.on_failure == "raise":
                raise
            log.warning("reward service unavailable; returning %s per completion (on_failure=%r): %s",
                        "None" if self.on_failure == "none" else "0.0", self.on_failure, exc)
            return [None if self.on_failure == "none" else 0.0] * len(completions)
        self._log(batch.results, batch.groups, kwargs.get("log_metric"), kwargs.get("log_extra"))
        if explain:
            self._log_explained(batch.results, kwargs.get("log_metric"), kwargs.get("log_extra"))
        return [float(r["reward"]) for r in batch.results]

    def _log(
        self,
        results: list[dict[str, Any]],
        groups: list[dict[str, Any]],
        log_metric: Callable[[str, float], None] | None,
        log_extra: Callable[[str, list[Any]], None] | None,
    ) -> None:
        """Components through TRL's hooks (TRL >= 1.0 passes them; older versions do not)."""
        if log_extra is not None:
            for column in ("accuracy", "format", "task_type"):
                log_extra(f"{self.__name__}/{column}", [r[column] for r in results])
        if log_metric is None or not results:
            return
        for component in ("accuracy", "format"):
            log_metric(f"{self.__name__}/{component}", sum(float(r[component]) for r in results) / len(results))
        by_task: dict[str, list[float]] = defaultdict(list)
        for r in results:
            by_task[r["task_type"]].append(float(r["accuracy"]))
        for task, values in sorted(by_task.items()):
            log_metric(f"{self.__name__}/accuracy/{task}", sum(values) / len(values))
        if groups:
            zero = sum(1 for g in groups if g.get("zero_variance"))
            log_metric(f"{self.__name__}/zero_variance_groups", zero / len(groups))

    def _log_explained(
        self,
        results: list[dict[str, Any]],
        log_metric: Callable[[str, float], None] | None,
        log_extra: Callable[[str, list[Any]], None] | None,
    ) -> None:
        """``explain=True``: what each rule read and whether it gave up, per completion (columns the
        completions table shows next to the rewards), plus the overrun rate and each sub-score's
        mean (scalars). Columns are written for every completion, "" / False where there is nothing,
        so TRL's table keeps one row per completion."""
        if log_extra is not None:
            log_extra(f"{self.__name__}/parsed", [parsed_text(r) for r in results])
            log_extra(f"{self.__name__}/timed_out", [bool(r.get("timed_out", False)) for r in results])
        if log_metric is None or not results:
            return
        log_metric(f"{self.__name__}/timed_out", sum(1 for r in results if r.get("timed_out")) / len(results))
        by_name: dict[str, list[float]] = defaultdict(list)
        for r in results:
            for sub, value in sub_scores_of(r).items():
                by_name[sub].append(value)
        for sub, values in sorted(by_name.items()):
            log_metric(f"{self.__name__}/{sub}", sum(values) / len(values))


def mixed_reward_func(url: str | Sequence[str] | None = None, **options: Any) -> MixedReward:
    """Factory: ``url`` (one, a comma-separated list or a list: failover order; default
    ``$MIXED_REWARD_URL``), ``token``, ``task_type`` (fixed for every row), ``task_type_key``,
    ``ground_truth_key``, ``prompt_id_key`` (column of stable prompt ids), ``format_weight``,
    ``bmas_reduction``, ``timeout``, ``max_attempts``, ``deadline``, ``on_failure`` ("raise" |
    "none" | "zero"), ``name``, ``model`` (the service's table for this policy), ``job`` (this
    training run), ``explain`` (log what each rule read; see the module docstring)."""
    return MixedReward(url, **options)


# For `trl grpo --reward_funcs mixed_reward_client.trl.mixed_reward`: configured from the environment
# (MIXED_REWARD_URL, MIXED_REWARD_TOKEN, ...) on the first call.
mixed_reward = MixedReward()
