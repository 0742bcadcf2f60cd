"""HTTP routes of the per-prompt difficulty state (docs/difficulty.md), and the hook that feeds it.

    GET  /v1/prompts/{prompt_id}   one prompt's posterior (404 if never scored)
    GET  /v1/prompts               the whole state of one job as JSONL, one prompt per line
    PUT  /v1/pools/{name}          register a candidate pool {"prompt_ids": [...]}
    POST /v1/sample                {"candidates": [...] | "pool": name, "k": n, "seed"?} -> k distinct ids

Every route answers for one training job (SPEC §15): the job the request names (``?job=``, the
``X-Reward-Job`` header, or ``job`` in a body), else its token's job, else ``default``, resolved by
:func:`~reward_server.service.auth.request_job`, so a job's token sees only its job's state.

Every route answers 404 ``difficulty_disabled`` while the server runs without ``--state-path``.
Scoring calls :func:`record_scored` after the rewards are computed and before answering, so an
acknowledged ``/score`` is a durable update; the rewards themselves never read this state. A
scoring request's ``Idempotency-Key`` header (:func:`idempotency_key`) makes that update happen
once however often the request is retried (the store remembers applied keys, store.py).
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeHistogramMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, StringConstraints

from reward_server.difficulty.backend import DifficultyBackend, LocalBackend, SampleRefused
from reward_server.difficulty.correctness import Thresholds, is_correct
from reward_server.difficulty.ids import canonical_prompt_id, prompt_id_problem
from reward_server.difficulty.posterior import DecayParams
from reward_server.difficulty.store import (
    DEFAULT_JOB,
    INFORMATIVE_RANGE,
    P_BUCKETS,
    DifficultyStore,
    Observation,
)
from reward_server.errors import (
    BodyTooLarge,
    DifficultyDisabled,
    Forbidden,
    InvalidRequest,
    KTooLarge,
    StateUnavailable,
    Unauthorized,
    UnknownPool,
    UnknownPrompt,
    UsageError,
)
from reward_server.items.models import PromptId
from reward_server.items.settings import Settings
from reward_server.rewards.scoring import ItemReward, PreparedItem
from reward_server.service.auth import Principal, request_job
from reward_server.service.json_body import read_json_body
from reward_server.service.openapi import error_responses, route_doc
from reward_server.service.schemas import RequestItem

log = logging.getLogger("reward_server.difficulty")
router = APIRouter(tags=["difficulty"])
_ERRORS = error_responses(Unauthorized, Forbidden, DifficultyDisabled, UnknownPrompt, InvalidRequest)
_BODY_ERRORS = error_responses(
    Unauthorized, Forbidden, DifficultyDisabled, UnknownPool, BodyTooLarge, InvalidRequest, KTooLarge
)
MAX_CANDIDATES = 1_000_000
IDEMPOTENCY_HEADER = "Idempotency-Key"
#: What a key may be: short enough to store millions of, printable so it can be logged and shown.
IDEMPOTENCY_KEY = re.compile(r"[\x20-\x7e]{1,128}")


def idempotency_key(request: Request) -> str | None:
    """The request's ``Idempotency-Key`` header (None when absent): one key per logical scoring
    request, the same on every retry and failover of it, so that its state updates apply once.
    Checked on every scoring request, with state or without, so a client learns of a bad key at once
    (422 naming the header), not when a server with state is first put behind it."""
    values = request.headers.getlist(IDEMPOTENCY_HEADER)
    if not values:
        return None
    if len(values) > 1:
        raise InvalidRequest.for_field(IDEMPOTENCY_HEADER, f"sent {len(values)} times; send one key per request")
    if not IDEMPOTENCY_KEY.fullmatch(values[0]):
        raise InvalidRequest.for_field(
            IDEMPOTENCY_HEADER, f"must be 1-128 printable ASCII characters (got {len(values[0])} characters"
            + (")" if values[0].isascii() else ", not all ASCII)")
        )
    return values[0]


def decay_params(settings: Settings) -> DecayParams:
    return DecayParams(
        prior_alpha=settings.difficulty_prior_alpha,
        prior_beta=settings.difficulty_prior_beta,
        local_decay=settings.difficulty_local_decay,
        stale_half_life=settings.difficulty_stale_half_life_items,
    )


def thresholds(settings: Settings) -> Thresholds:
    return Thresholds({
        "grounding": settings.difficulty_grounding_threshold, "open_ended": settings.difficulty_open_ended_threshold,
    })


def open_backend(settings: Settings) -> DifficultyBackend | None:
    """The backend the settings ask for: none, the embedded SQLite store, or the shared Ray actor."""
    if settings.state_ray_actor:
        if not settings.state_path:
            raise ValueError("state_ray_actor needs state_path: the file the actor keeps its state in")
        from reward_server.difficulty.ray_actor import RayBackend, get_or_create_actor

        actor = get_or_create_actor(
            settings.state_ray_actor, settings.state_path, decay_params(settings), settings.state_synchronous
        )
        return RayBackend(actor)
    if settings.state_path:
        try:
            store = DifficultyStore(settings.state_path, decay_params(settings), settings.state_synchronous)
        except (sqlite3.Error, OSError, RuntimeError) as exc:  # not a database, no such directory, ...
            raise UsageError(f"--state-path {settings.state_path}: cannot use it as the state store ({exc})") from None
        return LocalBackend(store)
    return None


def observations(
    items: Sequence[RequestItem], built: Sequence[PreparedItem], scores: Sequence[ItemReward], limits: Thresholds
) -> list[Observation]:
    """One observation per scored item that carries a prompt id, in request order."""
    out = []
    for item, prepared, score in zip(items, built, scores):
        if item.prompt_id is None:
            continue
        correct = is_correct(prepared, score, limits)
        out.append(Observation(canonical_prompt_id(item.prompt_id), correct))
    return out


async def record_scored(
    request_app: Any, items: Sequence[RequestItem], built: Sequence[PreparedItem], scores: Sequence[ItemReward],
    job: str = DEFAULT_JOB, key: str | None = None,
) -> None:
    """Durably update ``job``'s posteriors of the scored items; the caller answers only after this.
    All the request's observations go as one unit under its idempotency ``key``: a retry of a
    request whose update was committed (and whose answer was lost) changes nothing."""
    backend: DifficultyBackend | None = getattr(request_app.state, "difficulty", None)
    if backend is None:
        return
    found = observations(items, built, scores, request_app.state.difficulty_thresholds)
    if not found:
        return
    try:
        applied = await backend.record(job, found, key)
    except Exception as exc:
        log.exception("difficulty state: update failed")
        raise StateUnavailable(
            f"the rewards were computed but the difficulty state could not be "
            f"updated durably ({type(exc).__name__}); retry the request"
        ) from exc
    if applied:
        request_app.state.difficulty_metrics.updates.inc(len(found))
    else:
        request_app.state.difficulty_metrics.replays.inc()


class DifficultyMetrics(Collector):
    """``reward_difficulty_*``: prompts tracked, a gauge histogram of estimated p (bounds 0.1 .. 1.0),
    the share of informative prompts, and updates applied. The state summary is read from the
    last :meth:`refresh` (every few seconds, off the scrape path: in Ray mode it is a remote call)."""

    def __init__(self, registry: CollectorRegistry, live: Callable[[], dict[str, Any]] | None = None) -> None:
        self.summary: dict[str, Any] | None = None
        self._live = live  # the embedded store answers at scrape time, from memory
        self.updates = Counter(
            "reward_difficulty_updates", "Rollout outcomes applied to per-prompt posteriors.", registry=registry
        )
        self.replays = Counter(
            "reward_difficulty_replays",
            "Scored requests whose Idempotency-Key had been applied before (retries): not counted again.",
            registry=registry,
        )
        registry.register(self)

    async def refresh(self, backend: DifficultyBackend) -> None:
        self.summary = await backend.summary()

    def collect(self) -> Iterator[Metric]:
        summary = self._live() if self._live is not None else self.summary
        if summary is None:
            return
        tracked = GaugeMetricFamily("reward_difficulty_prompts", "Prompts with a difficulty posterior.")
        tracked.add_metric([], float(summary["prompts"]))
        yield tracked
        cumulative, buckets = 0, []
        for bound, count in zip(P_BUCKETS, summary["buckets"]):
            cumulative += count
            buckets.append((f"{bound:.1f}", float(cumulative)))
        buckets[-1] = ("+Inf", float(cumulative))
        yield GaugeHistogramMetricFamily(
            "reward_difficulty_estimated_p", "Prompts by posterior mean success probability (now).",
            buckets=buckets, gsum_value=float(summary["sum"]),
        )
        lo, hi = INFORMATIVE_RANGE
        share = GaugeMetricFamily(
            "reward_difficulty_informative_share",
            f"Share of tracked prompts with estimated p in [{lo}, {hi}] (a GRPO group there has signal).",
        )
        share.add_metric([], float(summary["informative_share"]))
        yield share


def install(app: FastAPI, settings: Settings, registry: CollectorRegistry) -> None:
    """Open the backend the settings ask for, include the routes and register the metrics."""
    app.state.difficulty = open_backend(settings)
    app.state.difficulty_thresholds = thresholds(settings)
    backend = app.state.difficulty
    live = backend.store.summary if isinstance(backend, LocalBackend) else None
    app.state.difficulty_metrics = DifficultyMetrics(registry, live)
    app.include_router(router)


async def refresh_metrics(app: FastAPI, every_s: float = 5.0) -> None:
    """Background task of the app's lifespan: keep the metrics' state summary fresh."""
    import asyncio

    backend = app.state.difficulty
    if backend is None or isinstance(backend, LocalBackend):
        return
    while True:
        try:
            await app.state.difficulty_metrics.refresh(backend)
        except Exception:
            log.exception("difficulty state: metrics refresh failed")
        await asyncio.sleep(every_s)


def _backend(request: Request) -> tuple[DifficultyBackend, Principal]:
    """The backend and the caller (the token before anything else, as on every route)."""
    principal = request.app.state.tokens.authenticate(request, "state")
    backend = getattr(request.app.state, "difficulty", None)
    if backend is None:
        raise DifficultyDisabled(
            "per-prompt difficulty is off; start the server with --state-path (REWARD_STATE_PATH) to enable it",
        )
    return backend, principal


def _check_id(value: object, field: str) -> str:
    problem = prompt_id_problem(value)
    if problem is not None:
        raise InvalidRequest.for_field(field, problem)
    return canonical_prompt_id(value)  # type: ignore[arg-type]


def _job_field() -> Any:
    return Field(None, description="The training job whose state this is; also ?job= or the X-Reward-Job header; "
                                   "unset: the token's job, else 'default'.")


class SampleRequest(BaseModel):
    """Exactly one of ``candidates`` and ``pool`` (the schema's ``oneOf`` says so; neither is
    nullable: leave the other out)."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"oneOf": [{"required": ["candidates"]}, {"required": ["pool"]}]}
    )

    job: StrictStr | None = _job_field()
    candidates: list[PromptId] = Field(
        None, min_length=1, max_length=MAX_CANDIDATES,  # type: ignore[arg-type]
        description="Prompt ids to choose from (duplicates count once).",
    )
    pool: Annotated[StrictStr, StringConstraints(min_length=1, max_length=512)] = Field(
        None, description="Name of a pool registered with PUT /v1/pools/{name}."  # type: ignore[arg-type]
    )
    k: StrictInt = Field(ge=1, description="How many distinct prompt ids to return.")
    seed: StrictInt | None = Field(None, ge=0, description="Makes the draw repeatable.")


class PoolRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    job: StrictStr | None = _job_field()
    prompt_ids: list[PromptId] = Field(min_length=1, max_length=MAX_CANDIDATES)


BODIES = (SampleRequest, PoolRequest)  # read by hand; their schemas are added to the OpenAPI document


def _ids(values: Sequence[object], field: str) -> list[str]:
    details = []
    ids = []
    for index, value in enumerate(values):
        problem = prompt_id_problem(value)
        if problem is not None:
            details.append({"item": index, "field": field, "message": problem})
        else:
            ids.append(canonical_prompt_id(value))  # type: ignore[arg-type]
    if details:
        raise InvalidRequest(f"{field}[{details[0]['item']}]: {details[0]['message']}", details)
    return ids


@router.get("/v1/prompts/{prompt_id:path}", responses=_ERRORS, openapi_extra=route_doc(auth="scoring"))
async def get_prompt(prompt_id: str, request: Request) -> dict[str, Any]:
    """One job's posterior of a prompt (``?job=``): alpha, beta (decayed to now), n, successes,
    estimated_p, last_update (unix seconds)."""
    backend, principal = _backend(request)
    job = request_job(request, principal)
    key = _check_id(prompt_id, "prompt_id")
    found = await backend.get(job, key)
    if found is None:
        raise UnknownPrompt(
            f"prompt_id: no scored item of job {job!r} has carried prompt_id {key!r}",
            [{"item": None, "field": "prompt_id", "message": "never scored"}],
        )
    return found


class NdjsonResponse(StreamingResponse):
    media_type = "application/x-ndjson"


_NDJSON = {200: {"description": "One JSON object per line (JSON Lines).",
                 "content": {"application/x-ndjson": {"schema": {"type": "string"}}}}}


@router.get("/v1/prompts", responses={**_NDJSON, **_ERRORS},
            openapi_extra=route_doc(auth="scoring"))
async def export_state(request: Request) -> NdjsonResponse:
    """One job's state as JSONL (``?job=``; one prompt per line, sorted by id, each naming its job);
    ``reward-server report`` reads it."""
    backend, principal = _backend(request)
    rows = await backend.export_rows(request_job(request, principal))

    async def lines() -> AsyncIterator[bytes]:
        for start in range(0, len(rows), 1000):
            yield "".join(json.dumps(row) + "\n" for row in rows[start : start + 1000]).encode()

    return NdjsonResponse(lines())


@router.put("/v1/pools/{name}", responses=_BODY_ERRORS, openapi_extra=route_doc(PoolRequest, auth="scoring"))
async def register_pool(name: str, request: Request) -> dict[str, Any]:
    """Register (or replace) one job's named candidate pool, durably; sample from it with
    ``{"pool": name}`` as the same job (pools of different jobs never mix)."""
    backend, principal = _backend(request)  # the token before the body
    body = await read_json_body(request, PoolRequest)
    job = request_job(request, principal, body.job)
    pool = _check_id(name, "name")
    ids = _ids(body.prompt_ids, "prompt_ids")
    await backend.register_pool(job, pool, ids)
    return {"pool": pool, "size": len(dict.fromkeys(ids)), "job": job}


@router.post("/v1/sample", responses=_BODY_ERRORS, openapi_extra=route_doc(SampleRequest, auth="scoring"))
async def sample(request: Request) -> JSONResponse:
    """``k`` distinct prompt ids by Thompson sampling on p(1-p): the prompts most likely to give a
    GRPO group with reward variance, by the posteriors of one job (``job`` or ``?job=``).
    Candidates the job never scored are drawn from the prior."""
    backend, principal = _backend(request)  # the token before the body
    body = await read_json_body(request, SampleRequest)
    job = request_job(request, principal, body.job)
    if (body.candidates is None) == (body.pool is None):
        raise InvalidRequest(
            "body: give exactly one of 'candidates' or 'pool'",
            [{"item": None, "field": "candidates", "message": "give exactly one of 'candidates' or 'pool'"}],
        )
    candidates = None if body.candidates is None else _ids(body.candidates, "candidates")
    result = await backend.sample(job, candidates, body.pool, body.k, body.seed)
    if isinstance(result, SampleRefused):
        kind, field = (UnknownPool, "pool") if result.reason == UnknownPool.type else (KTooLarge, "k")
        raise kind.for_field(field, result.message)
    return JSONResponse({"prompt_ids": result, "k": body.k, "job": job})
