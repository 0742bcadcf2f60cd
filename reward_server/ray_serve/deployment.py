"""The Ray Serve deployment: each replica is one engine + batcher holding its own table, with the
service's FastAPI app (``service/app.py``, unchanged routes) as its Serve ingress.

The app is built *in the replica* (``serve.ingress()`` late-bound, ``__serve_build_asgi_app__``),
after the replica loaded its table, so a replica that cannot load the table fails its constructor
and Serve reports the deployment as failed with that message (``reward-server serve --ray`` exits 2
naming it). Besides HTTP through the Serve proxy, a ``DeploymentHandle`` calls
:meth:`RewardReplica.handle_request`, which runs the same request through the same app in-process
(``inprocess.py``): same answers, no HTTP hop.

Each replica also
* reports to the application's registry (``registry.py``) every second: its table hash, the table
  generation it serves, the named tables it holds, whether it drains, its process and its own port;
* follows the table the registry publishes (``/admin/reload`` on any replica publishes one);
* drains when the application does: ``reward-server serve --ray`` on SIGTERM tells the registry,
  which wakes the call every replica keeps pending, and readiness turns 503 at once while the
  replica keeps serving (``launch.py`` deletes the application ``--drain-seconds`` later);
* serves ``/metrics``, ``/readyz`` and ``/healthz`` on its own port (``--host``'s interface), so
  Prometheus scrapes every replica (``/v1/metrics/targets``, behind the state token) and a probe
  can ask one replica (through the Serve proxy, a probe reaches one replica at random);
* takes part in Serve's model multiplexing: requests that name a table are routed to replicas that
  hold it (``multiplex.py``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import ray
from fastapi import FastAPI, Request
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, generate_latest
from ray import serve
from ray.serve import Application
from starlette.types import ASGIApp

from reward_server.embeddings.loader import TableLoadError, load_table
from reward_server.engine.idf import IdfFileError
from reward_server.engine.tables import DEFAULT_TABLE
from reward_server.errors import NotFound, NotReady, RewardServerError
from reward_server.items.settings import Settings
from reward_server.ray_serve import IDF_UNUSABLE, TABLE_UNLOADABLE
from reward_server.ray_serve.inprocess import asgi_request
from reward_server.ray_serve.multiplex import MODEL_HEADER, TableRouting, model_header
from reward_server.ray_serve.options import DEPLOYMENT_NAME, deployment_options, replica_settings
from reward_server.ray_serve.registry import REPORT_EVERY_S, get_or_create_registry, summary
from reward_server.service.app import ServiceHooks, create_app, load_configured_idf, swap_table

log = logging.getLogger("reward_server.ray")
RELOAD_WAIT_S = 600.0  # a reload answers once every replica serves the new table, or after this
PROBE_TIMEOUT_S = 10.0  # a /readyz on the replica's port that the event loop cannot answer by then: 503
WILDCARDS = ("", "0.0.0.0", "::")


class ReplicaStartError(RuntimeError):
    """The replica cannot serve (its table or idf file): the deployment fails with this message."""


def replica_port_address(host: str, node_ip: str) -> tuple[str, str]:
    """(interface to bind, address to advertise) for the replica's own port, from ``--host``.

    The port listens where the service was told to listen, never wider: ``--host 127.0.0.1`` keeps
    every replica's metrics on loopback (reachable from its own node only). A wildcard binds every
    interface and advertises the node's address (what Prometheus on another node dials). A
    specific address binds that address; on a node that does not have it (a multi-node cluster
    started with the head's address) the caller falls back to the node's address."""
    if host in WILDCARDS:
        return host or "0.0.0.0", node_ip
    return host, host


def _error_body(error: RewardServerError) -> bytes:
    """The service's error body, for the few answers the port gives itself."""
    return json.dumps(error.body()).encode()


def _hostport(host: str, port: int) -> str:
    try:
        return f"[{host}]:{port}" if ipaddress.ip_address(host).version == 6 else f"{host}:{port}"
    except ValueError:  # a host name
        return f"{host}:{port}"


class _ReplicaPort:
    """This replica's own port: ``/metrics`` (the 0.0.4 text format the service serves), and
    ``/readyz`` and ``/healthz`` answered by the replica's app itself (on its event loop, so a
    wedged loop is not reported ready), for probes and tests that must reach *this* replica."""

    def __init__(
        self, registry: CollectorRegistry, host: str, node_ip: str, probe: Callable[[str], tuple[int, bytes]],
    ) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path in ("/readyz", "/healthz"):
                    status, body = probe(path)
                    content_type = "application/json"
                elif path == "/metrics":
                    status, body, content_type = 200, generate_latest(registry), CONTENT_TYPE_PLAIN_0_0_4
                else:
                    missing = NotFound("/metrics, /readyz or /healthz")
                    status, body, content_type = missing.status, _error_body(missing), "application/json"
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        bind, advertise = replica_port_address(host, node_ip)
        try:
            self.server = self._listen(bind, Handler)
        except OSError as exc:  # the address is not this node's
            log.warning("cannot listen on %s (%s): the replica's port listens on the node's address %s",
                        bind, exc, node_ip)
            bind = advertise = node_ip
            self.server = self._listen(bind, Handler)
        self.bind = bind
        self.address = _hostport(advertise, self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, name="replica-port", daemon=True).start()

    @staticmethod
    def _listen(host: str, handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_class = type("ReplicaPortServer", (ThreadingHTTPServer,), {"address_family": family,
                                                                          "daemon_threads": True})
        return server_class((host, 0), handler)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _node_ip() -> str:
    """The address Ray knows this node by (``--node-ip-address``; 127.0.0.1 in the tests)."""
    worker = getattr(getattr(ray, "_private", None), "worker", None)
    address = getattr(getattr(worker, "global_worker", None), "node_ip_address", None)
    return address or ray.util.get_node_ip_address()


def metrics_targets_route(registry: Any, app_name: str) -> Callable[[Request], Awaitable[list[dict[str, Any]]]]:
    """``GET /v1/metrics/targets``: Prometheus HTTP service discovery, every live replica's own
    /metrics address. Behind the state token, like the other routes that describe the deployment's
    state: the list names every replica's host and port.

    Made here, at module level, not as a method: Serve pickles the deployment class by value, and
    a method's string annotations (``from __future__ import annotations``) would not find
    ``Request`` in its pickled globals, so FastAPI would take ``request`` for a query parameter."""

    async def metrics_targets(request: Request) -> list[dict[str, Any]]:
        request.app.state.tokens.authenticate(request, "state")
        live = await registry.live.remote()
        return [{"targets": sorted(r["metrics"] for r in live), "labels": {"service": "mixed-reward", "ray_app": app_name}}]

    return metrics_targets


@serve.deployment(name=DEPLOYMENT_NAME)
@serve.ingress()
class RewardReplica:
    async def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = Settings(**settings)
        s = self.settings
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        self.registry = get_or_create_registry(s.ray_app_name)
        # A replica that starts after a reload serves the published table, not its start-up one.
        self.generation, published = await self.registry.published.remote()
        spec = published or {"model_path": s.model_path, "device": s.device, "dtype": s.dtype}
        try:
            table = await asyncio.to_thread(
                load_table, spec["model_path"], device=spec.get("device") or s.device, dtype=spec.get("dtype") or s.dtype
            )
            idf = load_configured_idf(s, table)
        except (TableLoadError, ValueError, OSError) as exc:
            raise ReplicaStartError(f"{TABLE_UNLOADABLE}: {exc}") from exc
        except IdfFileError as exc:
            raise ReplicaStartError(f"{IDF_UNUSABLE}: {exc}") from exc
        self.table_error: str | None = None
        self.default_hash: str | None = table.info()["content_hash"]
        self.draining_since: float | None = None
        self.service_app: FastAPI = create_app(table, s, idf, hooks=ServiceHooks(info=self._info, reloaded=self._reloaded))
        self.service_app.add_api_route("/v1/metrics/targets", metrics_targets_route(self.registry, s.ray_app_name),
                                       methods=["GET"], include_in_schema=False)
        self._multiplexed = self._multiplexed_loader(s.max_resident_tables)
        build_stack = self.service_app.build_middleware_stack

        def with_table_routing() -> ASGIApp:  # around the app's whole stack, as app.py adds its own layers
            return TableRouting(build_stack(), lambda: self.service_app.state.service.tables, self._multiplexed)

        self.service_app.build_middleware_stack = with_table_routing  # type: ignore[method-assign]
        self.loop = asyncio.get_running_loop()
        self.node_ip = _node_ip()
        self.port = _ReplicaPort(self.service_app.state.metrics.registry, s.host, self.node_ip, self._probe)
        self._following: asyncio.Task[None] | None = None
        self._reporter = asyncio.create_task(self._report_forever())
        self._drain_watch = asyncio.create_task(self._watch_drain())
        log.info("replica %s: table %s, metrics on %s", self.replica_id, self.default_hash, self.port.address)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return self.service_app

    async def handle_request(
        self, method: str, path: str, headers: dict[str, str], body: bytes | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """One request through this replica's app, in-process: the DeploymentHandle path. The
        handle's ``multiplexed_model_id`` becomes the header the proxy would have forwarded, so both
        paths choose (and announce) the table the same way."""
        model = serve.get_multiplexed_model_id()
        if model and model_header(headers) is None:
            headers = {**headers, MODEL_HEADER: model}
        return await asgi_request(self.service_app, method, path, headers, body)

    async def check_health(self) -> None:
        """Serve replaces a replica whose scoring worker died or whose device failed (a CUDA error
        is sticky: the process cannot score any more)."""
        batcher = self.service_app.state.service.batcher
        if batcher._worker is not None and batcher._worker.done():
            raise RuntimeError("the scoring worker is not running")
        if batcher.device_error is not None:
            raise RuntimeError(f"the scoring device failed: {batcher.device_error}")

    # --- tables: Serve's model multiplexing (multiplex.py) ------------------------------------

    @staticmethod
    def _multiplexed_loader(max_tables: int) -> Callable[[str], Any]:
        """Serve's ``@serve.multiplexed`` loader, made per replica so that its LRU holds as many
        tables as ``--max-resident-tables``. It only tells Serve that this replica now holds
        ``name`` (Serve routes that table's requests here); the batcher loads the table, off the
        event loop and one at a time, when an item needs it. A plain function, not a method: Serve
        keeps its cache on the function object (a bound method takes no attributes)."""

        async def hold_serve_multiplexed_table(name: str) -> str:
            return name

        return serve.multiplexed(max_num_models_per_replica=max_tables)(hold_serve_multiplexed_table)

    # --- draining ------------------------------------------------------------------------------

    async def _watch_drain(self) -> None:
        """One call pending on the registry for the replica's whole life: it returns when
        ``reward-server serve --ray`` got SIGTERM, and from then on ``/readyz`` answers 503 while
        every request is still served (as ``reward-server serve`` does, service/shutdown.py)."""
        while True:
            try:
                since = await self.registry.wait_drain.remote()
            except asyncio.CancelledError:
                raise
            except ray.exceptions.RayError:  # the registry restarting: wait on the new one
                await asyncio.sleep(REPORT_EVERY_S)
                continue
            self.service_app.state.service.begin_drain()
            self.draining_since = time.time()
            log.info("replica %s: draining (readiness 503, still serving), %.3f s after the registry's call",
                     self.replica_id, self.draining_since - since)
            await self._report_once()
            return

    def _probe(self, path: str) -> tuple[int, bytes]:
        """``/readyz`` or ``/healthz`` from the replica's port thread, answered by the app."""
        future: concurrent.futures.Future[tuple[int, dict[str, str], bytes]] | None = None
        try:
            future = asyncio.run_coroutine_threadsafe(asgi_request(self.service_app, "GET", path, {}, None), self.loop)
            status, _, body = future.result(timeout=PROBE_TIMEOUT_S)
        # concurrent.futures.TimeoutError is the builtin only from Python 3.11 on
        except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError, RuntimeError) as exc:
            if future is not None:
                future.cancel()
            # a wedged or closed event loop is not ready, whatever the cause
            silent = NotReady(f"the replica did not answer ({type(exc).__name__})")
            return silent.status, _error_body(silent)
        return status, body

    # --- the registry ------------------------------------------------------------------------

    def _report(self) -> dict[str, Any]:
        tables = self.service_app.state.service.tables
        current = self.service_app.state.service.default_info().get("content_hash")
        if current is not None:  # the default table may be evicted for named ones: keep its last hash
            self.default_hash = current
        return {
            "pid": os.getpid(), "node_ip": self.node_ip, "metrics": self.port.address,
            "content_hash": self.default_hash, "generation": self.generation, "table_error": self.table_error,
            "draining": self.draining_since is not None, "draining_since": self.draining_since,
            "resident_tables": [entry.name for entry in tables.entries.values() if entry.resident],
            "table_loads": {entry.name: entry.loads for entry in tables.entries.values()},
            "reported_at": time.time(),
        }

    async def _report_once(self) -> None:
        generation, published = await self.registry.report.remote(self.replica_id, self._report())
        if generation > self.generation and published is not None and self._following is None:
            self._following = asyncio.create_task(self._follow(generation, published))

    async def _report_forever(self) -> None:
        while True:
            try:
                await self._report_once()
            except asyncio.CancelledError:
                raise
            except ray.exceptions.RayError:  # the registry restarting: report again next second
                log.warning("replica %s: cannot reach the registry", self.replica_id, exc_info=True)
            await asyncio.sleep(REPORT_EVERY_S)

    async def _follow(self, generation: int, table: dict[str, Any]) -> None:
        """Swap in the published table (another replica's /admin/reload), keeping on serving."""
        s = self.settings
        try:
            await swap_table(self.service_app.state.service, table.get("model_path"), table.get("device") or s.device,
                             table.get("dtype") or s.dtype, table.get("model") or DEFAULT_TABLE)
            self.table_error = None
        except RewardServerError as exc:
            self.table_error = exc.message
            log.error("replica %s: cannot load the published table: %s", self.replica_id, exc.message)
        finally:
            self.generation = max(self.generation, generation)
            self._following = None
        await self._report_once()

    # --- hooks into the app ------------------------------------------------------------------

    async def _info(self) -> dict[str, Any]:
        live = await self.registry.live.remote()
        generation, _ = await self.registry.published.remote()
        return {"replicas": {**summary(live, generation), "answered_by": self.replica_id}}

    async def _reloaded(self, request: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
        """This replica swapped its table: publish it and wait until every live replica serves it."""
        generation = await self.registry.publish.remote(
            {"model_path": request.get("model_path"), "device": request.get("device"), "dtype": request.get("dtype")}
        )
        self.generation = generation
        await self._report_once()
        deadline = time.monotonic() + RELOAD_WAIT_S
        while True:
            live = await self.registry.live.remote()
            if all(r["generation"] >= generation for r in live) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        failed = {r["replica_id"]: r["table_error"] for r in live if r.get("table_error")}
        if failed:
            log.error("reload: replicas could not load %s: %s", request.get("model_path"), failed)
        return {"replicas": summary(live, generation)}

    async def __del__(self) -> None:
        for task in (getattr(self, "_reporter", None), getattr(self, "_following", None),
                     getattr(self, "_drain_watch", None)):
            if task is not None:
                task.cancel()
        if hasattr(self, "port"):
            self.port.close()
        if not hasattr(self, "registry"):
            return
        try:
            await self.registry.forget.remote(self.replica_id)
        except ray.exceptions.RayError:  # the registry may already be gone with the cluster
            log.debug("replica %s: the registry is gone", self.replica_id)


def build_application(settings: Settings, cluster_gpus: float | None = None) -> Application:
    """The Serve application for ``settings`` (``serve.run`` it, or let ``launch.deploy`` do it)."""
    if cluster_gpus is None:
        cluster_gpus = float(ray.cluster_resources().get("GPU", 0)) if ray.is_initialized() else 0.0
    s = replica_settings(settings)
    return RewardReplica.options(**deployment_options(s, cluster_gpus)).bind(s.model_dump(mode="json"))


def build(args: dict[str, Any]) -> Application:
    """Application builder for Serve config files (deploy/ray/): ``args`` are Settings fields."""
    return build_application(Settings(**(args or {})))
