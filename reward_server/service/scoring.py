"""The one typed scoring service behind every protocol route (``/score``, ``/get_reward``,
``/slime``, the NeMo Gym server): validate, send each item where its family runs, gather, record.

vLLM's ``OpenAIServingChat``/``...Completion`` over one engine client is the model: the protocol
handlers are thin adapters that translate their trainer's body into request items and the answer
back, and every decision about scoring is made here once.

Where items go: a pooled family's items (math) to the worker pool, directly and concurrently; all
others through the batcher, which coalesces them with other requests into device batches. So a
hanging verification never holds up a batch of open-ended items, and an open-ended batch never
holds up a verification.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import Request

from reward_server.engine.batcher import Batcher
from reward_server.engine.pool import ScorerPool
from reward_server.engine.scorer import BatchReport
from reward_server.engine.tables import TableEntry
from reward_server.errors import InvalidItem, InvalidRequest, ItemFieldError, NotReady, summarise
from reward_server.items.models import RequestItem, RequestOptions
from reward_server.items.settings import Settings
from reward_server.items.validation import build_items, resolve_options
from reward_server.rewards.family import Runs, Score
from reward_server.rewards.options import ResolvedOptions
from reward_server.rewards.registry import FamilyRegistry
from reward_server.rewards.scoring import ItemReward, PreparedItem, combine
from reward_server.service.auth import Principal, request_job
from reward_server.service.difficulty import idempotency_key

#: Requests with more items than this are validated on a worker thread (the event loop stays free).
OFFLOAD_ITEMS = 256


@dataclass(frozen=True)
class Tenancy:
    """Who a request is for (SPEC §15): the table (policy) that scores its open-ended items, the
    training job it belongs to, and how urgent it is; and its ``Idempotency-Key``, which rides here
    to the difficulty state because every protocol route builds its tenancy the same way."""

    model: str | None = None  # None: the default table
    job: str = "default"
    priority: int = 0
    deadline_s: float | None = None
    idempotency_key: str | None = None  # the state update of a retried request applies once


@dataclass
class Scored:
    """One request's items, validated, and their results in the same order, with what it cost."""

    items: list[PreparedItem]
    results: list[ItemReward]
    table: dict[str, Any] | None = None  # the table that scored its open-ended items (None: none did)
    table_name: str | None = None
    queue_seconds: float = 0.0
    batch_items: int = 0
    report: BatchReport | None = None
    table_load_seconds: float = 0.0

    def table_info(self, entry: TableEntry) -> dict[str, Any]:
        """The answer's ``table``: its name and, when it is in memory, which checkpoint (the one that
        scored this request's open-ended items, if any)."""
        info = self.table if self.table is not None else (entry.engine.table.info() if entry.engine else {})
        return {"name": entry.name, **info}


def tenancy_of(
    request: Request, principal: Principal, model: str | None = None, job: str | None = None,
    priority: int | None = None, deadline_s: float | None = None,
) -> Tenancy:
    """A request's tenancy from its body fields, else its query (``?model=``, ``?job=``,
    ``?priority=``, ``?deadline_seconds=``: for trainers configured by URL) and ``X-Reward-Job``;
    the ``Idempotency-Key`` header."""
    query = request.query_params
    if model is None:
        model = query.get("model") or None
    if priority is None and "priority" in query:
        priority = _query_number(query["priority"], "priority", int, -1000, 1000)
    if deadline_s is None and "deadline_seconds" in query:
        deadline_s = _query_number(query["deadline_seconds"], "deadline_seconds", float, 1e-9, 86400.0)
    return Tenancy(model=model, job=request_job(request, principal, job), priority=priority or 0, deadline_s=deadline_s,
                   idempotency_key=idempotency_key(request))


def _query_number(text: str, field: str, kind: type, low: float, high: float) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise InvalidRequest.for_field(field, f"must be a number, got {text[:32]!r}") from None
    if not low <= value <= high:  # NaN too
        raise InvalidRequest.for_field(field, f"must be between {low:g} and {high:g}, got {text[:32]!r}")
    return value


def result_row(request_item: RequestItem, item: PreparedItem, scored: ItemReward) -> dict[str, Any]:
    """One item's result as ``/score`` answers it: the components, each named sub-score, and with
    ``options.explain`` what the rule read."""
    row: dict[str, Any] = {
        "id": request_item.id,
        "task_type": item.truth.family.name,
        "reward": scored.reward,
        "accuracy": scored.accuracy,
        "format": scored.format,
        **scored.sub_scores,
    }
    if scored.timed_out:
        row["timed_out"] = True
    if item.options.explain:
        row["parsed"] = scored.parsed
    if request_item.group_id is not None:
        row["group_id"] = request_item.group_id
    if request_item.prompt_id is not None:
        row["prompt_id"] = request_item.prompt_id
    return row


class ScoringService:
    """Validation, routing and recording for one app; ``app.state.scoring``."""

    def __init__(
        self, settings: Settings, registry: FamilyRegistry, batcher: Batcher, pool: ScorerPool, metrics: Any,
        record: Any, is_ready: Any,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.batcher = batcher
        self.pool = pool
        self.metrics = metrics
        self._record = record  # async (request items, prepared items, results, job, key) -> None: difficulty state
        self._is_ready = is_ready  # () -> bool: the table is loaded and the worker runs

    def options(self, options: RequestOptions | ResolvedOptions | None) -> ResolvedOptions:
        return options if isinstance(options, ResolvedOptions) else resolve_options(options, self.settings)

    async def score(
        self, items: Sequence[RequestItem], options: RequestOptions | ResolvedOptions | None = None,
        tenancy: Tenancy = Tenancy(),
    ) -> Scored:
        """Validate every item (one 422 naming each bad one), score them, record their outcomes
        durably (difficulty state) and return them in order."""
        if not self._is_ready():
            raise NotReady("the reward server is not ready (starting or shutting down)")
        table = self.batcher.tables.resolve(tenancy.model)  # an unknown model is a 422 even without open-ended items
        resolved = self.options(options)
        if len(items) > OFFLOAD_ITEMS:  # validating thousands of items must not hold up the event loop
            built = await asyncio.to_thread(build_items, items, resolved, self.settings, self.registry)
        else:
            built = build_items(items, resolved, self.settings, self.registry)
        if not built:
            return Scored(items=[], results=[])
        parts: dict[Runs, list[int]] = {Runs.INLINE: [], Runs.TABLE: [], Runs.POOL: []}
        for index, item in enumerate(built):
            parts[item.truth.family.runs].append(index)
        submit = functools.partial(self.metrics.submit, self.batcher, job=tenancy.job, priority=tenancy.priority,
                                   deadline_s=tenancy.deadline_s)
        jobs: dict[Runs, Any] = {}
        if parts[Runs.INLINE]:  # rule-scored items never wait for a table
            jobs[Runs.INLINE] = submit([built[i] for i in parts[Runs.INLINE]], table=None)
        if parts[Runs.TABLE]:
            jobs[Runs.TABLE] = submit([built[i] for i in parts[Runs.TABLE]], table=table.name)
        if parts[Runs.POOL]:
            jobs[Runs.POOL] = self.pool.score([built[i] for i in parts[Runs.POOL]])
        answers = dict(zip(jobs, await asyncio.gather(*jobs.values())))
        results: list[ItemReward | None] = [None] * len(built)
        scored = Scored(items=built, results=[])
        for runs in (Runs.INLINE, Runs.TABLE):
            outcome = answers.get(runs)
            if outcome is None:
                continue
            for index, result in zip(parts[runs], outcome.results):
                results[index] = result
            scored.queue_seconds = max(scored.queue_seconds, outcome.queue_seconds)
            scored.batch_items = max(scored.batch_items, outcome.batch_items)
            scored.report = outcome.report
            if outcome.table is not None:
                scored.table, scored.table_name = outcome.table, table.name
                scored.table_load_seconds = outcome.table_load_seconds
        if Runs.INLINE in answers or Runs.TABLE in answers:
            self.metrics.observe_queue_wait(scored.queue_seconds, tenancy.job)
        if Runs.POOL in answers:
            self._merge_pooled(items, built, parts[Runs.POOL], answers[Runs.POOL], results)
        scored.results = [r for r in results if r is not None]
        self.metrics.observe_results(built, scored.results, tenancy.job)
        await self._record(items, built, scored.results, tenancy.job, tenancy.idempotency_key)  # durable before answering
        return scored

    def _merge_pooled(
        self, items: Sequence[RequestItem], built: list[PreparedItem], pooled: list[int],
        answers: list[Score | BaseException], results: list[ItemReward | None],
    ) -> None:
        """Pooled scores into ``results``; a family's client error (a truth that parses to nothing)
        is a 422 naming the item, as if validation had found it; anything else is a bug (500)."""
        errors: list[dict[str, Any]] = []
        for index, answer in zip(pooled, answers):
            if isinstance(answer, ItemFieldError):
                detail: dict[str, Any] = {"item": index, "field": answer.field,
                                          "message": f"{answer.message} (task_type {built[index].truth.family.name})"}
                if items[index].id is not None:
                    detail["id"] = items[index].id
                errors.append(detail)
            elif isinstance(answer, BaseException):
                raise answer
            else:
                results[index] = combine(built[index], answer)
        if errors:
            raise InvalidItem(summarise(errors), errors)


__all__ = ["Scored", "ScoringService", "Tenancy", "result_row", "tenancy_of"]
