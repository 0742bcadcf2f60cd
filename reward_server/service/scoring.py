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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from reward_server.engine.batcher import Batcher
from reward_server.engine.pool import ScorerPool
from reward_server.engine.scorer import BatchReport
from reward_server.errors import InvalidItem, ItemFieldError, NotReady, summarise
from reward_server.items.models import RequestItem, RequestOptions
from reward_server.items.settings import Settings
from reward_server.items.validation import build_items, resolve_options
from reward_server.rewards.family import Runs, Score
from reward_server.rewards.options import ResolvedOptions
from reward_server.rewards.registry import FamilyRegistry
from reward_server.rewards.scoring import ItemReward, PreparedItem, combine


@dataclass
class Scored:
    """One request's items, validated, and their results in the same order, with what it cost."""

    items: list[PreparedItem]
    results: list[ItemReward]
    table: dict[str, Any] | None = None  # the table that scored its open-ended items (None: none did)
    queue_seconds: float = 0.0
    batch_items: int = 0
    report: BatchReport | None = None


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
        self._record = record  # async (request items, prepared items, results) -> None: difficulty state
        self._is_ready = is_ready  # () -> bool: the table is loaded and the worker runs

    def options(self, options: RequestOptions | ResolvedOptions | None) -> ResolvedOptions:
        return options if isinstance(options, ResolvedOptions) else resolve_options(options, self.settings)

    async def score(
        self, items: Sequence[RequestItem], options: RequestOptions | ResolvedOptions | None = None
    ) -> Scored:
        """Validate every item (one 422 naming each bad one), score them, record their outcomes
        durably (difficulty state) and return them in order."""
        if not self._is_ready():
            raise NotReady("the reward server is not ready (starting or shutting down)")
        built = build_items(items, self.options(options), self.settings, self.registry)
        if not built:
            return Scored(items=[], results=[])
        pooled = [i for i, item in enumerate(built) if item.truth.family.runs is Runs.POOL]
        batched = [i for i, item in enumerate(built) if item.truth.family.runs is not Runs.POOL]
        jobs = []
        if batched:
            jobs.append(self.metrics.submit(self.batcher, [built[i] for i in batched]))
        if pooled:
            jobs.append(self.pool.score([built[i] for i in pooled]))
        answers = await asyncio.gather(*jobs)
        results: list[ItemReward | None] = [None] * len(built)
        scored = Scored(items=built, results=[])
        if batched:
            outcome = answers[0]
            for index, result in zip(batched, outcome.results):
                results[index] = result
            scored.table, scored.queue_seconds = outcome.table, outcome.queue_seconds
            scored.batch_items, scored.report = outcome.batch_items, outcome.report
        if pooled:
            self._merge_pooled(items, built, pooled, answers[-1], results)
        scored.results = [r for r in results if r is not None]
        self.metrics.observe_results(built, scored.results)
        await self._record(items, built, scored.results)  # durable before anyone answers
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


__all__ = ["Scored", "ScoringService", "result_row"]
