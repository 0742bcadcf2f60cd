"""Prometheus metrics (SPEC §12): what the service did, how fast, and what the rewards look like.

People running GRPO watch this service for two reasons: latency (is the reward model the
bottleneck of the rollout loop?) and the rewards themselves (a reward distribution that collapses,
or groups whose rewards are all equal, is the first sign of a broken run). So besides the usual
request metrics there are reward-value histograms per task type and component and group
statistics.

Conventions: base units (seconds), ``_total`` counters, one ``reward_`` prefix, and label sets
bounded by the code, never by the traffic (task type, component, endpoint template, outcome,
error reason, batch stage, token side). Every labelled series is created at zero when the app is
built, so dashboards and ``increase()`` see the first request instead of a series that appears
already holding it.

Each :class:`ServiceMetrics` owns its own :class:`CollectorRegistry`: tests build several apps in
one process, and the service is one process per device by design (one scoring worker coalesces
every request into device batches and holds the only copy of the table), so prometheus-client's
multiprocess mode is deliberately not used; scale out with replicas, each scraped on its own.
"""

from __future__ import annotations

import platform
import threading
import time
from bisect import bisect_left
from collections.abc import Hashable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI
from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import reward_server
from reward_server.engine.batcher import Batcher, BatcherStopped, QueueFull, RequestOutcome
from reward_server.engine.scorer import BatchReport
from reward_server.errors import InternalError, http_kinds
from reward_server.rewards.family import RewardFamily
from reward_server.rewards.groups import GroupSummary
from reward_server.rewards.profiles import PROFILE_NAMES
from reward_server.rewards.scoring import ItemReward, PreparedItem
from reward_server.service.direct_routes import all_routes
from reward_server.service.errors import error_type_of, note_error_type

MIXED = "mixed"  # a group whose members have different task types
ITEM_OUTCOMES = ("scored", "rejected", "failed")
REQUEST_OUTCOMES = ("success", "client_error", "server_error")
OTHER = "other"
# Every error type a route may answer with (reward_server/errors.py), each created at zero. The
# endpoint label's series are created at zero for every route of the app when its middleware stack
# is built (see ``install``); any other path is ``other``.
ERROR_REASONS = (*(kind.type for kind in http_kinds()), OTHER)
_SMALL_BATCH = 32  # values per histogram call below which pure Python beats numpy

# Request latency and queue wait: from about 1 ms (a one-item rule request) to 30 s (a huge batch
# behind a deep queue).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_ITEM_BUCKETS = tuple(float(2**k) for k in range(15))  # 1 .. 16384
BATCH_TOKEN_BUCKETS = tuple(float(4**k) for k in range(2, 12))  # 16 .. 4M
GROUP_STD_BUCKETS = (0.0, 0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0)


def _steps(lo: float, hi: float, count: int) -> tuple[float, ...]:
    """Evenly spaced bucket bounds, rounded so the ``le`` labels read 0.1, not 0.30000000000000004."""
    return tuple(round(float(x), 6) for x in np.linspace(lo, hi, count))


# Reward-value buckets fit each component's range, read from the family's traits (SPEC §14):
# [0, 1] for binary rules, IoU and format; [-1, 1] for one BMAS direction; [-2, 2] for the BMAS sum;
# the final reward adds format_weight * format on top (weight 1 by default, more lands in +Inf).
UNIT_BUCKETS = _steps(0.0, 1.0, 11)


def _range_buckets(low: float, high: float) -> tuple[float, ...]:
    return _steps(low, high, 11 if high - low <= 1.0 else 21)


def reward_components(family: RewardFamily) -> dict[str, tuple[float, ...]]:
    """The components reported for a family, each with its bucket bounds."""
    low, high = family.accuracy_range
    components = {
        "reward": _steps(low, high + 1.0, 21),
        "accuracy": _range_buckets(low, high),
        "format": UNIT_BUCKETS,
    }
    for name in family.sub_scores:
        components[name] = _range_buckets(*family.sub_score_range)
    return components


class RewardValueHistograms(Collector):
    """``reward_value{task_type, component, profile}``: one histogram family whose bucket bounds differ by
    series, so a binary accuracy is not spread over [-2, 2] and BMAS is not squeezed into [0, 1].

    prometheus-client's Histogram has one bucket set per family, hence this small collector. It
    also observes a whole batch at once with numpy (one lock, one ``searchsorted`` per series)
    instead of one locked ``observe`` per item and component: a 8k-item batch is 30k values.

    BMAS terms can in principle be negative, so an open-ended ``_sum`` can decrease, which
    ``rate()`` reads as a counter reset. It takes a whole scrape interval of answers unrelated to
    their ground truths (each token's best match negative); docs/metrics.md notes the caveat.
    """

    name = "reward_value"

    def __init__(self, families: Sequence[RewardFamily]) -> None:
        self._lock = threading.Lock()
        self._bounds: dict[tuple[str, str, str], np.ndarray] = {}
        self._bound_lists: dict[tuple[str, str, str], list[float]] = {}
        self._counts: dict[tuple[str, str, str], np.ndarray] = {}
        self._sums: dict[tuple[str, str, str], float] = {}
        for family in families:
            for component, bounds in reward_components(family).items():
                for profile in PROFILE_NAMES:  # constants, so the label set stays bounded
                    key = (family.name, component, profile)
                    self._bounds[key] = np.asarray(bounds, dtype=np.float64)
                    self._bound_lists[key] = [float(b) for b in bounds]
                    self._counts[key] = np.zeros(len(bounds) + 1, dtype=np.int64)  # last: +Inf
                    self._sums[key] = 0.0

    def observe(self, task_type: str, component: str, values: Sequence[float], profile: str = PROFILE_NAMES[0]) -> None:
        key = (task_type, component, profile)
        if not values or key not in self._bounds:
            return
        if len(values) <= _SMALL_BATCH:  # one-item requests: numpy's per-call cost would dominate
            bounds_list = self._bound_lists[key]
            # bisect_left: the first bound >= value, i.e. the bucket whose le includes it.
            slots = [bisect_left(bounds_list, value) for value in values]
            small_total = float(sum(values))
            with self._lock:
                counts_now = self._counts[key]
                for slot in slots:
                    counts_now[slot] += 1
                self._sums[key] += small_total
            return
        array = np.asarray(values, dtype=np.float64)
        bounds = self._bounds[key]
        # side="left": the first bound >= value, i.e. the bucket whose le includes it.
        counts = np.bincount(np.searchsorted(bounds, array, side="left"), minlength=len(bounds) + 1)
        total = float(array.sum())
        with self._lock:
            self._counts[key] += counts
            self._sums[key] += total

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(
            self.name,
            "Reward values returned, per task type, component (reward, accuracy, format, bmas_*) and profile.",
            labels=("task_type", "component", "profile"),
        )
        with self._lock:
            snapshot = [(key, self._counts[key].copy(), self._sums[key]) for key in self._counts]
        for (task, component, profile), counts, total in snapshot:
            cumulative = np.cumsum(counts)
            les = [floatToGoString(b) for b in self._bounds[(task, component, profile)]] + ["+Inf"]
            family.add_metric(
                [task, component, profile], [(le, float(c)) for le, c in zip(les, cumulative)], None
            )
            # Added by hand: prometheus-client leaves _sum and _count out of histograms with
            # negative buckets (OpenMetrics forbids a _sum that may decrease). This endpoint serves
            # the 0.0.4 text format, where they are allowed, and the dashboard's means need them.
            labels = {"task_type": task, "component": component, "profile": profile}
            family.samples.append(Sample(f"{self.name}_count", labels, float(cumulative[-1])))
            family.samples.append(Sample(f"{self.name}_sum", labels, total))
        yield family


class TableInfoCollector(Collector):
    """``reward_table_info{name, ...}``: one series per table in memory, read at scrape time
    (``/admin/reload`` swaps a table, a load or an eviction changes the set)."""

    def __init__(self, state: Any) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        tables = self._state.tables
        resident = [(name, entry.engine.table.info()) for name, entry in tables.entries.items()
                    if entry.engine is not None]
        labels = sorted({key for _, info in resident for key in info} | {"name"})
        family = GaugeMetricFamily(
            "reward_table_info",
            "The embedding tables in memory (always 1 each); labels say which checkpoint and where.",
            labels=labels,
        )
        for name, info in resident:
            values = {key: str(value) for key, value in info.items()} | {"name": name}
            family.add_metric([values.get(key, "") for key in labels], 1.0)
        yield family


class JobQueueCollector(Collector):
    """``reward_job_queue_items{job}``: items queued per job, read at scrape time (every known job
    is listed, at zero when idle, so a dashboard sees a flood start)."""

    def __init__(self, state: Any, jobs: JobLabels) -> None:
        self._state = state
        self._jobs = jobs

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("reward_job_queue_items", "Items waiting in the batcher's queue, per job.",
                                   labels=("job",))
        counts = dict.fromkeys(self._jobs.known, 0)
        for job, items in self._state.batcher.queued_by_job().items():
            label = self._jobs(job)
            counts[label] = counts.get(label, 0) + items
        for job, items in counts.items():
            family.add_metric([job], float(items))
        yield family


def _build_info() -> dict[str, str]:
    return {
        "version": reward_server.__version__,
        "python_version": platform.python_version(),
        "torch_version": str(torch.__version__),
        "cuda_version": torch.version.cuda or "none",
    }


class JobLabels:
    """The ``job`` label's values, bounded: the configured jobs (the tokens file's) and ``default``,
    then the first jobs seen, up to ``limit``; any other job is counted as ``other``."""

    def __init__(self, configured: Sequence[str] = (), limit: int = 16) -> None:
        self.limit = limit
        self.known: list[str] = list(dict.fromkeys(["default", *configured]))[:limit]
        self._known = set(self.known)
        self._lock = threading.Lock()

    def __call__(self, job: str) -> str:
        if job in self._known:
            return job
        with self._lock:
            if job not in self._known and len(self.known) < self.limit:
                self.known.append(job)
                self._known.add(job)
        return job if job in self._known else OTHER


class ServiceMetrics:
    """All metrics of one app. app.py owns one and wires it in at four points:

    * ``install(app, state)``: adds ``GET /metrics`` and the request middleware (latency, in-flight,
      outcome per endpoint, errors by reason) and the scrape-time gauges (queue depth, table info).
    * ``observe_batch(report, items, seconds)``: the batcher's listener, once per device batch.
    * ``await submit(batcher, items)`` in place of ``batcher.submit(items)``: queue wait, items per
      task type and outcome, reward values; ``observe_groups(...)`` after the group statistics.
    """

    def __init__(self, families: Sequence[RewardFamily], jobs: JobLabels | None = None) -> None:
        self.jobs = jobs or JobLabels()
        # `_created` series double the series count and mean nothing on a dashboard.
        disable_created_metrics()
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.request_duration = Histogram(
            "reward_request_duration_seconds",
            "HTTP request latency, from the first byte in to the last byte out, per endpoint.",
            ("endpoint",), buckets=LATENCY_BUCKETS, registry=r,
        )
        self.requests = Counter(
            "reward_requests", "HTTP requests answered, per endpoint and outcome (status class).",
            ("endpoint", "outcome"), registry=r,
        )
        self.in_flight = Gauge(
            "reward_in_flight_requests", "HTTP requests being handled now (scrapes of /metrics excluded).",
            registry=r,
        )
        self.errors = Counter(
            "reward_errors", "Error responses by reason (the error.type of the JSON body).",
            ("reason",), registry=r,
        )
        self.queue_wait = Histogram(
            "reward_queue_wait_seconds",
            "Time a scoring request waited in the batcher's queue before its device batch started, per job.",
            ("job",), buckets=LATENCY_BUCKETS, registry=r,
        )
        self.items = Counter(
            "reward_items", "Items per task type, outcome (scored, rejected: queue full or "
            "shutting down, failed: a server bug), profile and job.", ("task_type", "outcome", "profile", "job"),
            registry=r,
        )
        self.batch_items = Histogram(
            "reward_batch_items", "Items per device batch (concurrent requests coalesced).",
            buckets=BATCH_ITEM_BUCKETS, registry=r,
        )
        self.batch_tokens = Histogram(
            "reward_batch_tokens", "BMAS tokens per device batch, by side (response or ground_truth).",
            ("side",), buckets=BATCH_TOKEN_BUCKETS, registry=r,
        )
        self.tokens = Counter(
            "reward_tokens", "BMAS tokens scored, by side (response or ground_truth).", ("side",), registry=r
        )
        self.batch_duration = Histogram(
            "reward_batch_duration_seconds", "Wall time of one device batch (rules, tokenizing, kernel).",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.stage_seconds = Counter(
            "reward_batch_stage_seconds", "Time spent per engine stage (rules, tokenize, kernel).",
            ("stage",), registry=r,
        )
        self.groups = Counter(
            "reward_groups", "GRPO groups summarised, per task type ('mixed' if members differ).",
            ("task_type",), registry=r,
        )
        self.zero_variance_groups = Counter(
            "reward_zero_variance_groups", "GRPO groups whose rewards are all equal: no learning signal.",
            ("task_type",), registry=r,
        )
        self.group_std = Histogram(
            "reward_group_std", "Sample std of the rewards within each GRPO group.",
            ("task_type",), buckets=GROUP_STD_BUCKETS, registry=r,
        )
        self.timeouts = Counter(
            "reward_item_timeouts", "Items of a pooled family (math) whose scorer overran its deadline or whose worker died (scored 0).",
            ("task_type",), registry=r,
        )
        self.reward_values = RewardValueHistograms(families)
        task_types = [family.name for family in families]
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        r.register(self.reward_values)
        Info("reward_build", "Service build: package, Python, torch and CUDA versions.", registry=r).info(
            _build_info()
        )
        for job in self.jobs.known:
            self.queue_wait.labels(job)
        for task in task_types:
            self.timeouts.labels(task)
            for outcome in ITEM_OUTCOMES:
                for profile in PROFILE_NAMES:
                    for job in self.jobs.known:
                        self.items.labels(task, outcome, profile, job)
        for task in (*task_types, MIXED):
            self.groups.labels(task)
            self.zero_variance_groups.labels(task)
            self.group_std.labels(task)
        for reason in ERROR_REASONS:
            self.errors.labels(reason)
        for side in ("response", "ground_truth"):
            self.tokens.labels(side)
            self.batch_tokens.labels(side)
        for stage in ("rules", "tokenize", "kernel"):
            self.stage_seconds.labels(stage)
        self._create_endpoint_series((OTHER,))

    def _create_endpoint_series(self, endpoints: Iterable[str]) -> None:
        for endpoint in endpoints:
            self.request_duration.labels(endpoint)
            for outcome in REQUEST_OUTCOMES:
                self.requests.labels(endpoint, outcome)

    # --- wiring -------------------------------------------------------------------------------

    def install(self, app: FastAPI, state: Any) -> None:
        """Add ``GET /metrics``, the request middleware and the scrape-time gauges to ``app``."""
        r = self.registry
        Gauge("reward_queue_depth_items", "Items waiting in the batcher's queue.", registry=r).set_function(
            lambda: state.batcher.queued_items
        )
        Gauge("reward_ready", "1 while the service is ready to score (/readyz answers 200).", registry=r).set_function(
            lambda: 1.0 if state.answers_ready else 0.0
        )
        r.register(TableInfoCollector(state))
        r.register(JobQueueCollector(state, self.jobs))

        @app.get("/metrics", include_in_schema=False)
        async def metrics_endpoint(_: Request) -> Response:
            """Prometheus text format 0.0.4, which every Prometheus version scrapes."""
            return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_PLAIN_0_0_4)

        # Wrap the whole middleware stack rather than add_middleware(): middleware added later
        # (the body-size limit) sits outside anything added here, so its 413s and its time would
        # go unseen, and so would the 500s rendered by Starlette's outermost error middleware.
        build = app.build_middleware_stack

        def build_with_metrics() -> ASGIApp:
            self._create_endpoint_series(route_paths(app))  # every route exists by now
            return _RequestMetrics(build(), self, app)

        app.build_middleware_stack = build_with_metrics  # type: ignore[method-assign]

    def render(self) -> bytes:
        """The exposition text, for tests and for embedding in other servers."""
        return generate_latest(self.registry)

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, remembered: prometheus-client validates and locks on every
        ``labels()`` call, a few µs that every one-item request paid several times. Label values
        are bounded by the code (see the module docstring), so is this cache."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    # --- per batch, per request, per group -----------------------------------------------------

    def observe_batch(self, report: BatchReport, items: int, seconds: float) -> None:
        """Called by the batcher after every device batch."""
        self.batch_items.observe(items)
        self.batch_duration.observe(seconds)
        self.batch_tokens.labels("response").observe(report.response_tokens)
        self.batch_tokens.labels("ground_truth").observe(report.truth_tokens)
        self.tokens.labels("response").inc(report.response_tokens)
        self.tokens.labels("ground_truth").inc(report.truth_tokens)
        self.stage_seconds.labels("rules").inc(report.rules_seconds)
        self.stage_seconds.labels("tokenize").inc(report.tokenize_seconds)
        self.stage_seconds.labels("kernel").inc(report.kernel_seconds)

    async def submit(
        self, batcher: Batcher, items: Sequence[PreparedItem], *, job: str = "default", **queueing: Any
    ) -> RequestOutcome:
        """``batcher.submit(items, job=job, **queueing)``, observed: items that never got a score are
        counted by why."""
        try:
            outcome = await batcher.submit(items, job=job, **queueing)
        except (QueueFull, BatcherStopped):
            self._count_items(items, "rejected", job)
            raise
        except Exception:
            self._count_items(items, "failed", job)
            raise
        return outcome

    def observe_queue_wait(self, seconds: float, job: str = "default") -> None:
        """One scoring request's wait in the batcher's queue (its longest part's)."""
        self._child(self.queue_wait, self.jobs(job)).observe(seconds)

    def observe_results(self, items: Sequence[PreparedItem], results: Sequence[ItemReward], job: str = "default") -> None:
        """One request's items per task type, and every reward component (sub-scores included)."""
        by_task: dict[tuple[RewardFamily, str], list[ItemReward]] = {}
        for item, scored in zip(items, results):
            by_task.setdefault((item.truth.family, item.options.profile), []).append(scored)
        for (family, profile), scores in by_task.items():
            task = family.name
            self._child(self.items, task, "scored", profile, self.jobs(job)).inc(len(scores))
            values = self.reward_values
            values.observe(task, "reward", [s.reward for s in scores], profile)
            values.observe(task, "accuracy", [s.accuracy for s in scores], profile)
            values.observe(task, "format", [s.format for s in scores], profile)
            for name in family.sub_scores:
                values.observe(task, name, [s.sub_scores[name] for s in scores if name in s.sub_scores], profile)

    def observe_groups(
        self,
        groups: Sequence[GroupSummary],
        group_ids: Sequence[Hashable | None] = (),
        items: Sequence[PreparedItem] = (),
    ) -> None:
        """Group std and zero-variance counts; ``group_ids``/``items`` (parallel, per item) give each
        group its task type, so a task whose groups saturate (all right or all wrong) stands out.

        Only groups of two or more items in one request count: a trainer that sends one item per
        request splits every group across requests, and its one-item "groups" say nothing."""
        task_of: dict[Hashable, str] = {}
        for gid, item in zip(group_ids, items):
            if gid is None:
                continue
            task = item.truth.family.name
            if task_of.setdefault(gid, task) != task:
                task_of[gid] = MIXED
        for group in groups:
            if group.size < 2:
                continue
            task = task_of.get(group.group_id, MIXED)
            self.groups.labels(task).inc()
            self.group_std.labels(task).observe(group.std)
            if group.zero_variance:
                self.zero_variance_groups.labels(task).inc()

    def _count_items(self, items: Iterable[PreparedItem], outcome: str, job: str = "default") -> None:
        counts: dict[tuple[str, str], int] = {}
        for item in items:
            key = (item.truth.family.name, item.options.profile)
            counts[key] = counts.get(key, 0) + 1
        for (task, profile), count in counts.items():
            self.items.labels(task, outcome, profile, self.jobs(job)).inc(count)

    # --- HTTP -----------------------------------------------------------------------------------

    def observe_request(self, endpoint: str, status: int, seconds: float, reason: str | None) -> None:
        self._child(self.request_duration, endpoint).observe(seconds)
        outcome = "success" if status < 400 else "client_error" if status < 500 else "server_error"
        self._child(self.requests, endpoint, outcome).inc()
        if status >= 400:
            self._child(self.errors, reason if reason in ERROR_REASONS else OTHER).inc()


def _endpoint(app: FastAPI, scope: Scope) -> str:
    """The route template that answered (``/score``), so the label is bounded by the routes.

    FastAPI records the matched route in ``scope["route"]`` (included routers too, prefix and all);
    the plain Starlette routes (``/docs``, ``/openapi.json``) are matched here. Anything else is
    ``other``: a scanner probing random URLs must not mint series.
    """
    path = getattr(scope.get("route"), "path", None)
    if isinstance(path, str):
        return path
    for route in app.router.routes:
        route_path = getattr(route, "path", None)
        if isinstance(route_path, str) and route.matches(scope)[0] is not Match.NONE:
            return route_path
    return OTHER


def route_paths(app: FastAPI) -> list[str]:
    """The path templates of the app's routes, in order (included routers too)."""
    return list(dict.fromkeys(p for route in all_routes(app.router.routes) if isinstance(p := getattr(route, "path", None), str)))


class _RequestMetrics:
    """Pure ASGI middleware (no BaseHTTPMiddleware: it would buffer and re-task every request).

    The endpoint is known once the router has run, so everything is recorded at the end. The error
    reason is what the renderer of the error wrote into the request's state (service/errors.py);
    bodies are never read. Scrapes of /metrics are not "in flight" work.
    """

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, fastapi_app: FastAPI) -> None:
        self.app = app
        self.metrics = metrics
        self.fastapi_app = fastapi_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        counted = scope.get("path") != "/metrics"
        started = time.perf_counter()
        if counted:
            self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_observed)
        except Exception:
            if status == 0:  # nothing was sent: the server answers 500 for it
                status = 500
                note_error_type(scope, InternalError.type)
            raise
        finally:
            if counted:
                self.metrics.in_flight.dec()
            if status:  # 0: cancelled before answering (shutdown), not a response to count
                reason = error_type_of(scope) if status >= 400 else None
                endpoint = _endpoint(self.fastapi_app, scope)
                self.metrics.observe_request(endpoint, status, time.perf_counter() - started, reason)


__all__ = ["ServiceMetrics", "reward_components", "route_paths"]
