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
  generation it serves, its process and where its own ``/metrics`` listens;
* follows the table the registry publishes (``/admin/reload`` on any replica publishes one);
* serves its metrics on its own port, so Prometheus scrapes every replica (``/v1/metrics/targets``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import ray
from fastapi import FastAPI
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, generate_latest
from ray import serve
from ray.serve import Application

from reward_server.embeddings.loader import TableLoadError, load_table
from reward_server.engine.idf import IdfFileError
from reward_server.engine.tables import DEFAULT_TABLE
from reward_server.errors import RewardServerError
from reward_server.items.settings import Settings
from reward_server.ray_serve import IDF_UNUSABLE, TABLE_UNLOADABLE
from reward_server.ray_serve.inprocess import asgi_request
from reward_server.ray_serve.options import DEPLOYMENT_NAME, deployment_options, replica_settings
from reward_server.ray_serve.registry import REPORT_EVERY_S, get_or_create_registry, summary
from reward_server.service.app import ServiceHooks, create_app, load_configured_idf, swap_table

log = logging.getLogger("reward_server.ray")
RELOAD_WAIT_S = 600.0  # a reload answers once every replica serves the new table, or after this


class ReplicaStartError(RuntimeError):
    """The replica cannot serve (its table or idf file): the deployment fails with this message."""


class _MetricsServer:
    """This replica's ``/metrics`` on its own port, in the 0.0.4 text format the service serves."""

    def __init__(self, registry: CollectorRegistry, host: str) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = generate_latest(registry)
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_PLAIN_0_0_4)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.address = f"{host}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, name="replica-metrics", daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _node_ip() -> str:
    """The address Ray knows this node by (``--node-ip-address``; 127.0.0.1 in the tests)."""
    worker = getattr(getattr(ray, "_private", None), "worker", None)
    address = getattr(getattr(worker, "global_worker", None), "node_ip_address", None)
    return address or ray.util.get_node_ip_address()


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
        self.service_app: FastAPI = create_app(table, s, idf, hooks=ServiceHooks(info=self._info, reloaded=self._reloaded))
        self.service_app.add_api_route("/v1/metrics/targets", self._metrics_targets, methods=["GET"], include_in_schema=False)
        self.node_ip = _node_ip()
        self.metrics = _MetricsServer(self.service_app.state.metrics.registry, self.node_ip)
        self._following: asyncio.Task[None] | None = None
        self._reporter = asyncio.create_task(self._report_forever())
        log.info("replica %s: table %s, metrics on %s", self.replica_id, table.info()["content_hash"],
                 self.metrics.address)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return self.service_app

    async def handle_request(
        self, method: str, path: str, headers: dict[str, str], body: bytes | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """One request through this replica's app, in-process: the DeploymentHandle path."""
        return await asgi_request(self.service_app, method, path, headers, body)

    async def check_health(self) -> None:
        """Serve replaces a replica whose scoring worker died or whose device failed (a CUDA error
        is sticky: the process cannot score any more)."""
        batcher = self.service_app.state.service.batcher
        if batcher._worker is not None and batcher._worker.done():
            raise RuntimeError("the scoring worker is not running")
        if batcher.device_error is not None:
            raise RuntimeError(f"the scoring device failed: {batcher.device_error}")

    # --- the registry ------------------------------------------------------------------------

    def _report(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(), "node_ip": self.node_ip, "metrics": self.metrics.address,
            "content_hash": self.service_app.state.service.default_info().get("content_hash"),
            "generation": self.generation, "table_error": self.table_error, "reported_at": time.time(),
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

    async def _metrics_targets(self) -> list[dict[str, Any]]:
        """Prometheus HTTP service discovery: every live replica's own /metrics address."""
        live = await self.registry.live.remote()
        return [{"targets": sorted(r["metrics"] for r in live),
                 "labels": {"service": "mixed-reward", "ray_app": self.settings.ray_app_name}}]

    async def __del__(self) -> None:
        for task in (getattr(self, "_reporter", None), getattr(self, "_following", None)):
            if task is not None:
                task.cancel()
        if hasattr(self, "metrics"):
            self.metrics.close()
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
