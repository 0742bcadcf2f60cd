"""``reward-server serve --ray``: join (or start) a Ray cluster, deploy the application, wait until
every replica serves, then stay up until SIGTERM/SIGINT and delete the application on the way out
(as ``serve run`` does).

It never hangs on a broken start: a missing extra, an unreachable cluster, contradicting settings
and a replica that cannot load its table each exit at once with their own status and a message
naming the cause:

    0  stopped by a signal after serving
    2  bad configuration or table (a replica could not load it: the replica's message is printed)
    3  Ray Serve is not installed (the message says how to install it)
    4  no Ray cluster reachable at --ray-address
    5  the deployment did not become ready for another reason (or within --ray-start-timeout)
    6  --host:--port is taken by another process (Serve's proxy could not listen there)

Each is an error kind of :mod:`reward_server.errors` (its ``exit_code``), raised here and printed
as one line by ``reward_server.cli``.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
import threading
import time
from typing import Any

from reward_server.errors import AddressInUse, ClusterUnreachable, DeployFailed, InvalidTable
from reward_server.items.settings import Settings
from reward_server.ray_serve import IDF_UNUSABLE, TABLE_UNLOADABLE, require_ray
from reward_server.ray_serve.options import check_ray_settings
from reward_server.ray_serve.registry import NAMESPACE, registry_name

START_TIMEOUT_S = 600.0  # pulling a large table onto a fresh node takes minutes, not hours

log = logging.getLogger("reward_server.ray")


class TableDeployFailed(InvalidTable):
    """A replica could not load its table or idf file (exit 2, like ``serve`` without Ray)."""


def _probe(address: str, timeout_s: float = 5.0) -> None:
    """A TCP connect to host:port first, so an unreachable address fails in seconds (ray.init
    itself would keep retrying the GCS for a minute)."""
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterUnreachable(f"--ray-address {address!r} is not auto, local, host:port or ray://host:port")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ClusterUnreachable(f"no Ray cluster reachable at {address}: {exc}") from exc


def connect(address: str | None) -> None:
    """Join the cluster at ``address`` (see the ray_address setting); raises :class:`ClusterUnreachable`."""
    import ray

    if ray.is_initialized():
        return
    if address not in (None, "auto", "local"):
        _probe(address)
    try:
        ray.init(address=address, namespace=NAMESPACE, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ClusterUnreachable(f"cannot join the Ray cluster at {address or 'auto'}: {exc}") from exc


def _failure(name: str, status: Any) -> str:
    parts = [f"application {name!r} is {status.status}: {status.message}".rstrip(": ")]
    for deployment, info in status.deployments.items():
        if info.message:
            parts.append(f"deployment {deployment} is {info.status}: {info.message}")
    return "\n".join(parts)


def wait_ready(name: str, timeout_s: float = START_TIMEOUT_S) -> None:
    """Until the application runs; :class:`DeployFailed` when Serve gives up on it or time runs out."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = serve.status().applications.get(name)
        if last is not None:
            state = str(getattr(last.status, "value", last.status))
            if state == "RUNNING":
                return
            if state in ("DEPLOY_FAILED", "UNHEALTHY"):
                message = f"the Ray Serve deployment failed: {_failure(name, last)}"
                unloadable = TABLE_UNLOADABLE in message or IDF_UNUSABLE in message
                raise (TableDeployFailed if unloadable else DeployFailed)(message)
        time.sleep(0.5)
    detail = _failure(name, last) if last is not None else "Serve never listed it"
    raise DeployFailed(f"the Ray Serve deployment is not ready after {timeout_s:.0f}s: {detail}")


def deploy(*applications: Settings, timeout_s: float = START_TIMEOUT_S) -> None:
    """Deploy (or update) one application per ``Settings`` on the connected cluster (they start
    side by side) and wait until all run."""
    from ray import serve
    from ray.serve.api import RunTarget

    from reward_server.ray_serve.deployment import build_application

    targets = []
    for settings in applications:
        check_ray_settings(settings)
        targets.append(RunTarget(target=build_application(settings), name=settings.ray_app_name,
                                 route_prefix=settings.ray_route_prefix))
    serve.run_many(targets, wait_for_applications_running=False)
    for settings in applications:
        wait_ready(settings.ray_app_name, timeout_s)


def shutdown_app(settings: Settings) -> None:
    """Delete the application and its registry (the state actor stays: it owns a file)."""
    import ray
    from ray import serve

    serve.delete(settings.ray_app_name)
    try:
        ray.kill(ray.get_actor(registry_name(settings.ray_app_name), namespace=NAMESPACE))
    except ValueError:
        pass


def start_proxy(settings: Settings) -> None:
    """Start Serve's HTTP proxy on --host:--port; a port taken by another process is
    :class:`AddressInUse` (exit 6), not a page of RayTaskError."""
    from ray import serve

    try:
        serve.start(http_options={"host": settings.host, "port": settings.port})
    except Exception as exc:  # Serve wraps the proxy's bind failure in a RayTaskError
        text = str(exc).lower()
        if any(sign in text for sign in ("failed to bind to address", "address already in use", "errno 98")):
            raise AddressInUse(
                f"{settings.host}:{settings.port} is already in use by another process (a `reward-server serve` "
                "without --ray?); stop it or choose another --port / REWARD_PORT"
            ) from None
        raise


def serve_on_ray(settings: Settings) -> int:
    """The whole command; returns 0 after serving, raises an error kind (its exit code) otherwise."""
    require_ray()
    check_ray_settings(settings)
    connect(settings.ray_address)
    start_proxy(settings)
    try:
        deploy(settings)
    except (DeployFailed, TableDeployFailed):
        shutdown_app(settings)
        raise
    scale = (f"{settings.min_replicas}..{settings.max_replicas} replicas (autoscaling)"
             if settings.min_replicas is not None else f"{settings.replicas} replica(s)")
    prefix = settings.ray_route_prefix.rstrip("/")
    print(f"reward-server: {scale} of {settings.ray_app_name!r} ready at "
          f"http://{settings.host}:{settings.port}{prefix}/score; from Ray code: "
          f"RayRewardClient(app_name={settings.ray_app_name!r})", file=sys.stderr, flush=True)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        stop.wait()
    finally:
        shutdown_app(settings)
    return 0
