"""``reward-server serve --ray``: join (or start) a Ray cluster, deploy the application, wait until
every replica serves, then stay up until SIGTERM/SIGINT and delete the application on the way out
(as ``serve run`` does), draining first the way ``reward-server serve`` does (service/shutdown.py):

* first SIGTERM: every replica's ``/readyz`` answers 503 at once (the registry wakes the call each
  replica keeps pending: milliseconds, not a report interval), while every replica keeps serving
  for ``--drain-seconds``, so load balancers and clients with several URLs move away while nothing
  is refused; then the application is deleted (Serve lets requests in flight finish, up to 30 s).
  Deleting at once made the proxy answer 404 to every new request at the moment of the signal;
* first SIGINT (Ctrl-C at a terminal): readiness 503 and delete, with no drain period;
* a second SIGTERM or SIGINT, at any point: stop waiting, at once (the deletion goes on in Serve).

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


DELETE_POLL_S = 0.1


def shutdown_app(settings: Settings, stop_now: threading.Event | None = None) -> None:
    """Delete the application and its registry (the state actor stays: it owns a file). Waits until
    Serve has deleted it (its replicas finish their requests in flight first), unless ``stop_now``
    is set meanwhile (a second signal)."""
    import ray
    from ray import serve

    name = settings.ray_app_name
    if stop_now is None:
        serve.delete(name)
    else:
        serve.delete(name, _blocking=False)
        while name in serve.status().applications and not stop_now.wait(DELETE_POLL_S):
            pass
    try:
        ray.kill(ray.get_actor(registry_name(name), namespace=NAMESPACE))
    except ValueError:
        pass


class Signals:
    """SIGTERM/SIGINT for the whole command: the first one starts the shutdown (a SIGTERM with a
    drain period, a SIGINT without), a second one cuts it short. Only sets events: it runs in the
    main thread between bytecodes, and the main thread does the work."""

    def __init__(self) -> None:
        self.first = threading.Event()
        self.second = threading.Event()
        self.signum: int | None = None

    def install(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self.handle)

    def handle(self, signum: int, _frame: Any) -> None:
        if self.first.is_set():
            self.second.set()
            return
        self.signum = signum
        self.first.set()

    @property
    def drains(self) -> bool:
        """A SIGTERM drains; a Ctrl-C at a terminal does not (nobody routes traffic to it)."""
        return self.signum == signal.SIGTERM


def begin_drain(registry: Any) -> None:
    """Readiness 503 on every replica now (registry.py); a registry that is gone is logged, not
    fatal: the application is deleted all the same."""
    import ray

    try:
        ray.get(registry.begin_drain.remote(), timeout=10)
    except (ray.exceptions.RayError, TimeoutError) as exc:
        log.warning("cannot tell the replicas to drain: %s", exc)


def drain_and_delete(settings: Settings, signals: Signals, registry: Any) -> None:
    """After the first signal: drain (readiness 503, serving on for --drain-seconds after a
    SIGTERM), then delete the application."""
    try:
        begin_drain(registry)
        if signals.drains and settings.drain_seconds > 0:
            print(f"reward-server: SIGTERM: readiness is 503 on every replica of {settings.ray_app_name!r}; "
                  f"serving for {settings.drain_seconds:g} s more, then deleting it", file=sys.stderr, flush=True)
            signals.second.wait(settings.drain_seconds)
    finally:
        shutdown_app(settings, stop_now=signals.second)


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
    import ray

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
    signals = Signals()
    signals.install()
    # Looked up now, not after the signal: the drain must reach the replicas within milliseconds.
    registry = ray.get_actor(registry_name(settings.ray_app_name), namespace=NAMESPACE)
    print(f"reward-server: {scale} of {settings.ray_app_name!r} ready at "
          f"http://{settings.host}:{settings.port}{prefix}/score; from Ray code: "
          f"RayRewardClient(app_name={settings.ray_app_name!r})", file=sys.stderr, flush=True)
    try:
        signals.first.wait()
    finally:
        drain_and_delete(settings, signals, registry)
    return 0
