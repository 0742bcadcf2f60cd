"""verl (0.9.x): ``compute_score`` for ``reward.custom_reward_function``.

    reward.custom_reward_function.path=pkg://mixed_reward_client.verl
    reward.custom_reward_function.name=compute_score
    +reward.custom_reward_function.reward_kwargs.url=http://rm-a:8000,http://rm-b:8000

verl's reward loop awaits ``compute_score(data_source, solution_str, ground_truth, extra_info)``
once per sample, about a thousand at a time per worker, all on the worker's event loop. Sending
one HTTP request per sample would waste the server's batching, so concurrent calls are
coalesced: they queue here and go out as one ``POST /score`` when ``max_batch`` samples are
waiting or ``flush_ms`` milliseconds after the first one arrived, whichever comes first.

Each sample is checked and JSON-encoded when it is queued: a sample that cannot be sent (a NaN
ground truth, an object JSON has no form for) fails its own call, naming its data source and
index, and never the batch it would have joined.

Every sample returns the same keys, ``score``, ``accuracy`` and ``format`` (verl stacks each key
across the batch, so a key missing for one sample would break the step); all are finite.
If the service cannot be reached after the retries, the call raises and verl's step fails with
that error: a failure is never silently scored 0 unless ``on_failure="zero"`` was set.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping
from typing import Any

from mixed_reward_client._config import check_on_failure, per_loop, resolve
from mixed_reward_client.client import AsyncRewardClient, encode_item
from mixed_reward_client.errors import RewardClientError, ServerUnavailable

log = logging.getLogger("mixed_reward_client.verl")

COMPONENTS = ("accuracy", "format")


class Coalescer:
    """Gathers concurrent single-sample calls on one event loop into batched requests."""

    def __init__(self, client: AsyncRewardClient, flush_s: float, max_batch: int) -> None:
        self.client = client
        self.flush_s = flush_s
        self.max_batch = max(1, max_batch)
        self._pending: list[tuple[dict[str, Any], bytes, asyncio.Future[dict[str, Any]]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self.requests = 0  # batched requests sent, for tests and logs

    async def score(self, item: dict[str, Any], label: str = "sample") -> dict[str, Any]:
        """Queue one item; raises :class:`RewardClientError` naming ``label`` at once when the item
        cannot be encoded, so it never reaches (or fails) a batch."""
        wire, encoded = encode_item(item, label)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._pending.append((wire, encoded, future))
        if len(self._pending) >= self.max_batch:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.flush_s, self._flush)
        return await future

    async def aclose(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await self.client.aclose()

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending, []
        if batch:
            self.requests += 1
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._inflight.add(task)  # keep a reference: the loop only holds weak ones
            task.add_done_callback(self._inflight.discard)

    async def _send(self, batch: list[tuple[dict[str, Any], bytes, asyncio.Future[dict[str, Any]]]]) -> None:
        try:
            prepared = self.client._prepared([w for w, _, _ in batch], [b for _, b, _ in batch], None, None)
            answer = await self.client._score_prepared(prepared)
        except asyncio.CancelledError:
            for _, _, future in batch:
                future.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - handed to every waiting sample, which re-raises it
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, _, future), row in zip(batch, answer.results):
            if not future.done():
                future.set_result(row)


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
    **_verl_kwargs: Any,
) -> dict[str, float]:
    """Score one sample through the shared per-loop batcher. Extra keyword arguments verl passes
    (``reward_router_address``, ``reward_model_tokenizer``) are accepted and ignored."""
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
    )
    coalescer = await per_loop(
        ("verl", settings, float(flush_ms), int(max_batch)),
        lambda: Coalescer(
            AsyncRewardClient(list(settings.urls), **settings.client_kwargs()), flush_ms / 1000.0, max_batch
        ),
    )
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
        return {"score": 0.0, **{name: 0.0 for name in COMPONENTS}}
    out = {"score": float(row["reward"]), **{name: float(row[name]) for name in COMPONENTS}}
    if not all(math.isfinite(v) for v in out.values()):
        raise RewardClientError(f"the server returned a non-finite score {out} for task {item['task_type']}")
    return out
