"""The HTTP service (SPEC §11): FastAPI routes over one batcher that owns the reward engine.

The table is loaded before the app is built (``reward-server serve`` fails fast on a bad
checkpoint), so a running server is a ready server; ``/readyz`` turns 503 only while shutting down
(from the first SIGTERM on, while requests are still served: see ``service/shutdown.py``).

Every route checks its bearer token before it reads the body, so a caller without the token
learns nothing about validation (401 first), and reads it with one reader (``json_body.py``).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

import reward_server
from reward_server.embeddings.loader import TableLoadError
from reward_server.embeddings.placement import resolve_device, resolve_dtype
from reward_server.embeddings.table import EmbeddingTable
from reward_server.engine.batcher import Batcher
from reward_server.engine.idf import IdfTable, load_idf
from reward_server.engine.pool import ScorerPool
from reward_server.engine.scorer import RewardEngine
from reward_server.engine.tables import DEFAULT_TABLE, TableRegistry, parse_table_flags
from reward_server.errors import (
    AdminDisabled,
    BodyTooLarge,
    Draining,
    InvalidRequest,
    InvalidTable,
    NotReady,
    ReloadInProgress,
    Unauthorized,
)
from reward_server.items.models import ScoreRequest
from reward_server.items.settings import Settings
from reward_server.rewards.groups import summarise_groups
from reward_server.rewards.profiles import PROFILES
from reward_server.rewards.registry import FamilyRegistry, build_registry
from reward_server.service import difficulty
from reward_server.service.auth import TokenBook
from reward_server.service.body_limit import BodySizeLimit
from reward_server.service.direct_routes import install_direct_routes
from reward_server.service.docs_ui import install_docs_ui
from reward_server.service.errors import install_error_handlers
from reward_server.service.json_body import read_json_body
from reward_server.service.metrics import JobLabels, ServiceMetrics
from reward_server.service.openapi import SCORING_ERRORS, error_responses, install_openapi, route_doc
from reward_server.service.openrlhf import GetRewardRequest
from reward_server.service.openrlhf import router as openrlhf_router
from reward_server.service.schemas import ScoreResponse, TableInfo
from reward_server.service.scoring import ScoringService, result_row, tenancy_of
from reward_server.service.slime import SlimeSample
from reward_server.service.slime import router as slime_router

log = logging.getLogger("reward_server")


def _freeze_heap() -> None:
    """Move everything alive now (torch, transformers, the table) out of the garbage collector's sight.

    A process that imported torch and transformers holds millions of objects; each full collection
    walks them all, and a burst of requests triggers several, which doubled the time 512 concurrent
    one-item requests took. Frozen objects are never freed, so this runs only after start-up and
    after a table reload, when what is alive is what the server keeps.
    """
    gc.collect()
    gc.freeze()


def build_engine(table: EmbeddingTable, settings: Settings, idf: IdfTable | None = None) -> RewardEngine:
    return RewardEngine(
        table,
        memory_budget_bytes=settings.memory_budget_mb << 20,
        truth_cache_entries=settings.truth_cache_entries,
        idf=idf,
    )


def load_configured_idf(settings: Settings, table: EmbeddingTable) -> IdfTable | None:
    """The idf file of ``settings.idf_path``, checked against the table; raises :class:`IdfFileError`."""
    if settings.idf_path is None:
        return None
    return load_idf(settings.idf_path, table.tokenizer, table.vocab_size)


def profiles_info(settings: Settings, idf: IdfTable | None) -> dict[str, Any]:
    """``/v1/info``'s profiles: what each changes, and which token weights the robust one uses."""
    listed: dict[str, Any] = {name: profile.info() for name, profile in PROFILES.items()}
    listed["robust"]["token_weights"] = (
        {"source": "idf", "path": settings.idf_path, **idf.info()} if idf is not None else {"source": "uniform"}
    )
    return listed


@dataclass
class ServiceState:
    settings: Settings
    batcher: Batcher
    ready: bool = False  # the table is loaded and the scoring worker runs
    draining: bool = False  # shutting down: /readyz answers 503, requests are still served
    reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def begin_drain(self) -> None:
        """Tell load balancers to stop sending (readiness 503) while serving what still arrives.
        Only sets a flag, so it is safe to call from a signal handler."""
        self.draining = True

    @property
    def answers_ready(self) -> bool:
        """What ``/readyz`` answers (200 or not): loaded, not draining, its device working."""
        return self.ready and not self.draining and self.batcher.device_error is None

    @property
    def tables(self) -> TableRegistry:
        return self.batcher.tables

    @property
    def table(self) -> EmbeddingTable:
        """The default table (what a single-table server serves); only while it is in memory."""
        return self.batcher.engine.table

    def default_info(self) -> dict[str, Any]:
        """The default table's info: its checkpoint's when in memory, else what its entry knows
        (several tables may share the memory: the default may have been evicted)."""
        entry = self.tables.resolve(None)
        return entry.engine.table.info() if entry.engine is not None else entry.info()


@dataclass(frozen=True)
class ServiceHooks:
    """What a host around the app adds to it (Ray Serve: ``reward_server/ray_serve``), so that the
    routes stay one implementation. ``info`` adds keys to ``/v1/info``; ``reloaded`` runs after this
    process swapped its table on ``/admin/reload`` (with the request's ``model_path``, ``device``,
    ``dtype`` and the new table's info) and adds keys to the answer: in Ray mode it rolls the table
    through every other replica."""

    info: Callable[[], Awaitable[dict[str, Any]]] | None = None
    reloaded: Callable[[dict[str, Any], dict[str, Any]], Awaitable[dict[str, Any]]] | None = None


async def swap_table(
    state: ServiceState, model_path: str | None, device: str | None, dtype: str | None, name: str = DEFAULT_TABLE,
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Load a table and swap it in as ``name`` under the reload lock: the batch in flight finishes
    on the old table, every later batch uses the new one, the old one is freed. Returns (previous
    info, current info); raises :class:`InvalidTable` naming ``model_path`` when it cannot be used."""
    async with state.reload_lock:
        try:
            old, current = await state.tables.reload(name, model_path, device, dtype)
        except (InvalidTable, ValueError, OSError, RuntimeError) as exc:
            raise InvalidTable.for_field("model_path", str(exc), prefix=False) from exc
        gc.unfreeze()  # let the old table's objects be collected, then freeze the new set
        _freeze_heap()
        log.info("table %s reloaded: %s -> %s", name, (old or {}).get("content_hash"), current["content_hash"])
        return old, current


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="Which table to replace (GET /v1/info's tables); null: the default.")
    model_path: Annotated[str, StringConstraints(min_length=1)] | None = Field(
        None, description="Checkpoint directory; null: the embedded default (an empty string is refused: it would "
        "be the server's working directory).",
    )
    device: str | None = Field(None, description="torch device (cpu, cuda, cuda:1); null: the server's.")
    dtype: str | None = Field(None, description="float32, bfloat16 or float16 (or fp32, bf16, fp16); null: the server's.")


class ReloadResponse(BaseModel):
    model_config = ConfigDict(extra="allow")  # Ray mode adds "replicas": which replica serves which table

    previous: TableInfo | None = Field(
        description="The table replaced, as it was when last in memory; null: it had never been loaded."
    )
    current: TableInfo


class Readiness(BaseModel):
    status: str
    # The default table may be evicted for named ones (--max-resident-tables): then its entry
    # (name, resident false, path, loads, and the table's facts as when last loaded), not a 500
    # from the response check. The dict comes first: a union tried the other way round would read
    # an evicted entry as a TableInfo and drop its "resident": false.
    table: dict[str, Any] | TableInfo


def _placement(field: str, resolve: Any, *args: Any) -> Any:
    try:
        return resolve(*args)
    except TableLoadError as exc:
        raise InvalidTable.for_field(field, str(exc)) from exc


def create_app(
    table: EmbeddingTable, settings: Settings | None = None, idf: IdfTable | None = None,
    hooks: ServiceHooks | None = None, registry: FamilyRegistry | None = None,
) -> FastAPI:
    """The app for ``table``. ``idf`` defaults to ``settings.idf_path``'s file (which may raise
    :class:`IdfFileError`: ``reward-server serve`` loads it first, to exit 2 naming the file)."""
    settings = settings or Settings()
    hooks = hooks or ServiceHooks()
    if idf is None:
        idf = load_configured_idf(settings, table)
    if registry is None:  # a plug-in that clashes or fails to load stops the start (exit 2)
        registry = build_registry(settings.rewards_module)
    tokens = TokenBook(settings)  # a bad tokens file stops the start (exit 2)
    metrics = ServiceMetrics(registry.families(), JobLabels(tokens.jobs, settings.max_job_labels))
    tables = TableRegistry(
        build_engine(table, settings, idf), parse_table_flags(settings.table), default_path=settings.model_path,
        max_resident=settings.max_resident_tables, pinned=settings.pin,
        build=lambda loaded, weights: build_engine(loaded, settings, weights),
        device=settings.device, dtype=settings.dtype, idf=idf, idf_path=settings.idf_path,
    )
    pool = ScorerPool(
        settings.math_workers, settings.math_timeout_seconds, settings.rewards_module,
        on_timeout=lambda family: metrics.timeouts.labels(family).inc(),
    )
    state = ServiceState(
        settings=settings,
        batcher=Batcher(
            tables,
            max_wait_s=settings.batch_max_wait_ms / 1000.0,
            max_batch_items=settings.batch_max_items,
            shared_batch_items=settings.batch_shared_items,
            max_queue_items=settings.queue_max_items,
            job_queue_items=settings.job_queue_items,
            on_batch=metrics.observe_batch,
        ),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await state.batcher.start()
        preload = asyncio.create_task(tables.load_pinned())  # in the background: rule items need no table
        refresher = asyncio.create_task(difficulty.refresh_metrics(app))
        _freeze_heap()
        state.ready = True
        try:
            yield
        finally:
            state.ready = False
            await state.batcher.stop()
            await asyncio.to_thread(pool.close)
            preload.cancel()
            refresher.cancel()
            if app.state.difficulty is not None:
                await app.state.difficulty.close()  # commits what is queued

    app = FastAPI(
        title="mixed-reward",
        version=reward_server.__version__,
        description="Mixed-R1 rewards (matching, chart, IoU, format, BMAS, and the families of GET /v1/info) "
        "for GRPO trainers.",
        lifespan=lifespan,
        docs_url=None, redoc_url=None,  # served from the package instead: service/docs_ui.py
    )
    app.state.service = state
    app.state.metrics = metrics
    app.state.tokens = tokens
    # The per-sample routes skip the framework's routing (inside the metrics middleware, added next).
    install_direct_routes(app, ("/score", "/get_reward", "/slime"), settings.max_body_bytes)
    metrics.install(app, state)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    install_error_handlers(app)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Alive: the process answers. Says nothing about the table."""
        return {"status": "ok"}

    @app.get("/readyz", response_model=Readiness, responses=error_responses(NotReady, Draining))
    async def readyz() -> dict[str, Any]:
        """Ready: the table is loaded, the scoring worker runs and the server is not shutting down."""
        if state.draining:
            raise Draining("the reward server is shutting down; send new requests elsewhere")
        if not state.ready:
            raise NotReady("the reward server is not ready (starting or shutting down)")
        if state.batcher.device_error is not None:  # a CUDA error: this process cannot score any more
            raise NotReady(f"the scoring device failed: {state.batcher.device_error}")
        return {"status": "ready", "table": state.default_info()}

    @app.get("/v1/info")
    async def info() -> dict[str, Any]:
        default = state.default_info()
        return {
            "version": reward_server.__version__,
            "model": default.get("source") or default.get("path"),
            **default,
            "defaults": {
                "format_weight": settings.format_weight,
                "bmas_reduction": settings.bmas_reduction,
                "profile": settings.profile,
            },
            "profiles": profiles_info(settings, state.tables.idf),
            "limits": {
                "max_items_per_request": settings.max_items_per_request,
                "max_chars_per_text": settings.max_chars_per_text,
                "max_body_bytes": settings.max_body_bytes,
            },
            "tables": state.tables.info(),
            "jobs": {"known": metrics.jobs.known, "queued_items": state.batcher.queued_by_job(),
                     "job_queue_items": settings.job_queue_items},
            "task_types": registry.names(),
            "families": {family.name: {**family.info(), "origin": registry.origin(family.name)}
                         for family in registry.families()},
            **(await hooks.info() if hooks.info is not None else {}),
        }

    scoring = ScoringService(
        settings, registry, state.batcher, pool, metrics,
        record=lambda items, built, results, job, key: difficulty.record_scored(app, items, built, results, job, key),
        is_ready=lambda: state.ready,
    )
    app.state.scoring = scoring
    app.include_router(openrlhf_router)
    app.include_router(slime_router)
    difficulty.install(app, settings, metrics.registry)

    @app.post(
        "/score", response_model=ScoreResponse, responses=error_responses(*SCORING_ERRORS),
        openapi_extra=route_doc(ScoreRequest, auth="scoring"),
    )
    async def score(http_request: Request) -> JSONResponse:
        """Score a batch; one result per item, in order, plus group statistics when items carry group_id."""
        started = time.perf_counter()
        principal = tokens.authenticate(http_request, "score")
        request = await read_json_body(http_request, ScoreRequest, count=("items", settings.max_items_per_request))
        tenancy = tenancy_of(http_request, principal, request.model, request.job, request.priority,
                             request.deadline_seconds)
        scored = await scoring.score(request.items, request.options, tenancy)
        results = [result_row(*row) for row in zip(request.items, scored.items, scored.results)]
        group_ids = [item.group_id for item in request.items]
        groups = summarise_groups(group_ids, [r.reward for r in scored.results], settings.zero_variance_tolerance)
        metrics.observe_groups(groups, group_ids, scored.items)
        report = scored.report
        body = {
            "profile": scored.items[0].options.profile if scored.items else scoring.options(request.options).profile,
            "results": results,
            "groups": [g.__dict__ for g in groups],
            "table": scored.table_info(state.tables.resolve(tenancy.model)),
            "job": tenancy.job,
            "timing": {
                "queue_seconds": scored.queue_seconds,
                "table_load_seconds": scored.table_load_seconds,
                "tokenize_seconds": report.tokenize_seconds if report else 0.0,
                "kernel_seconds": report.kernel_seconds if report else 0.0,
                "total_seconds": time.perf_counter() - started,
                "batch_items": scored.batch_items,
            },
        }
        return JSONResponse(body)

    @app.post(
        "/admin/reload", response_model=ReloadResponse, responses=error_responses(Unauthorized, AdminDisabled, ReloadInProgress, BodyTooLarge, InvalidRequest, InvalidTable),
        openapi_extra=route_doc(ReloadRequest, auth="admin"),
    )
    async def reload_table(http_request: Request) -> dict[str, Any]:
        """Swap in a newer checkpoint's table without dropping a request: the batch in flight
        finishes on the old table, every later batch uses the new one."""
        if not tokens.admin_enabled():
            raise AdminDisabled("the admin API is disabled; set REWARD_ADMIN_TOKEN (or an admin-scoped token in "
                                "--tokens-file) to enable it")
        tokens.authenticate(http_request, "admin")
        request = await read_json_body(http_request, ReloadRequest)
        name = state.tables.resolve(request.model).name  # an unknown table is a 422 listing the names
        if state.reload_lock.locked():
            raise ReloadInProgress("another reload is in progress")
        device = request.device or settings.device
        dtype = request.dtype or settings.dtype
        # Checked before loading, so that the error names the field (not model_path).
        target = _placement("device", resolve_device, device)
        _placement("dtype", resolve_dtype, dtype, target)
        old, current = await swap_table(state, request.model_path, device, dtype, name)
        extra = {} if hooks.reloaded is None else await hooks.reloaded(request.model_dump(), current)
        return {"previous": old, "current": current, **extra}

    install_docs_ui(app)
    install_openapi(app, settings, ScoreRequest, GetRewardRequest, ReloadRequest, SlimeSample, *difficulty.BODIES,
                    task_types=registry.accepted_names())
    return app
