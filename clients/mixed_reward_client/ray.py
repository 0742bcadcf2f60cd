"""Ray-native clients: score through the Serve deployment's ``DeploymentHandle``, no HTTP hop.

For trainer code that already lives on the Ray cluster the service runs on (verl, OpenRLHF, slime,
ROLL workers started by ``reward-server serve --ray``, see deploy/scale-out.md)::

    from mixed_reward_client.ray import RayRewardClient
    client = RayRewardClient("mixed-reward")          # the Serve application name
    batch = client.score(items)                       # same ScoreBatch as RewardClient.score
    policy_b = RayRewardClient("mixed-reward", model="policy-b")   # a named table (--table policy-b=...)

Same API, results and errors as the HTTP clients (they share every decision: batching, splitting,
retries, deadline, error types): the replica runs the call through the same FastAPI app
in-process, so a 4xx comes back as :class:`BadRequest` with the same error body, and a replica
that dies mid-call (its process killed, its node gone) is a failed attempt retried on another
replica, then :class:`ServerUnavailable`. The retry carries the same ``Idempotency-Key``, so a
difficulty-state update the dead replica had committed is not applied again.
:func:`ray_coalescer` gathers concurrent one-sample calls into batched ones, as
``_coalesce.Coalescer`` does over HTTP.

Tables (SPEC §15): ``model=`` names the table the calls are scored with. It travels as Serve's
*multiplexed model id* (``handle.options(multiplexed_model_id=...)``), so Serve routes the calls to
a replica that already holds that table (each replica holds at most ``--max-resident-tables``),
and the replica scores with it (reward_server/ray_serve/multiplex.py). A call's own ``model=``
wins over the client's, for the routing as for the scoring.

``ray`` is imported only when a client is made, so this module imports without Ray installed; the
client then raises :class:`RewardClientError` saying how to install it.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from mixed_reward_client._coalesce import DEFAULT_FLUSH_MS, DEFAULT_MAX_BATCH, Coalescer
from mixed_reward_client._config import per_loop
from mixed_reward_client._policy import Endpoints, RetryState
from mixed_reward_client.client import AsyncRewardClient, Exchanged, RewardClient, _ClientBase, path_model
from mixed_reward_client.errors import RewardClientError

DEFAULT_APP = "mixed-reward"
DEFAULT_DEPLOYMENT = "RewardReplica"  # reward_server.ray_serve.options.DEPLOYMENT_NAME
INSTALL_HINT = 'pip install "ray[serve]==2.60.0"'
_PLACEHOLDER_URL = "http://ray-serve.invalid"  # _ClientBase wants one; nothing is ever sent to it


def _serve() -> Any:
    try:
        from ray import serve
    except ImportError as exc:
        raise RewardClientError(
            f"mixed_reward_client.ray needs Ray Serve in this process ({exc}); install it with: {INSTALL_HINT}, "
            "or use RewardClient with the service's HTTP URL"
        ) from exc
    return serve


def _transport_errors() -> tuple[type[BaseException], ...]:
    """What a handle call raises when the replica, not the request, failed: retried elsewhere."""
    from ray.exceptions import RayError
    from ray.serve.exceptions import RayServeException

    return (RayError, RayServeException, TimeoutError, asyncio.TimeoutError)


class _HandleEndpoints(Endpoints):
    """One logical endpoint, the deployment: Serve itself picks (and replaces) replicas."""

    def __init__(self, label: str) -> None:
        self.urls = [label]
        self.failback_after = None
        self._preferred = 0
        self._since = 0.0
        self._lock = threading.Lock()


class _HandleBase:
    """What both Ray clients share: the handle, its label, the table, and the per-attempt timeout."""

    _endpoints: Endpoints
    _read_timeout: float

    def _attach(self, app_name: str, deployment: str, handle: Any | None, model: str | None) -> None:
        serve = _serve()
        self.app_name = app_name
        self.multiplexed_model_id = model or None  # the client's table; a call's own model wins
        self.label = f"serve://{app_name}/{deployment}" + (f"?model={model}" if model else "")
        self._endpoints = _HandleEndpoints(self.label)
        base = handle if handle is not None else serve.get_deployment_handle(deployment, app_name=app_name)
        self._handle = base.options(method_name="handle_request")
        self._by_model: dict[str, Any] = {}
        self._transport_errors = _transport_errors()

    def _handle_for(self, path: str) -> Any:
        """The handle for one request: routed by its table (Serve's multiplexed model id), so
        that Serve sends it to a replica holding that table; one handle per table, made once. The
        table is the request path's ``?model=`` (the call's, or the client's, ``model``)."""
        model = path_model(path) or self.multiplexed_model_id
        if model is None:
            return self._handle
        handle = self._by_model.get(model)
        if handle is None:
            handle = self._by_model[model] = self._handle.options(multiplexed_model_id=model)
        return handle

    @property
    def urls(self) -> list[str]:
        return [self.label]

    def _attempt_timeout(self, state: RetryState) -> float:
        left = state.remaining()
        return self._read_timeout if left is None else max(0.001, min(self._read_timeout, left))


class RayRewardClient(_HandleBase, RewardClient):
    """Blocking twin of :class:`~mixed_reward_client.RewardClient` over a Serve ``DeploymentHandle``.
    Takes the same keyword arguments (token, timeout, retry, max_batch_items, format_weight, ...);
    ``model`` names the table (module docstring)."""

    def __init__(
        self, app_name: str = DEFAULT_APP, *, deployment: str = DEFAULT_DEPLOYMENT, handle: Any | None = None,
        model: str | None = None, **kwargs: Any,
    ) -> None:
        _ClientBase.__init__(self, _PLACEHOLDER_URL, model=model, **kwargs)
        self._attach(app_name, deployment, handle, model)

    def close(self) -> None:
        """Nothing to close: the handle belongs to Ray."""

    def _exchange(self, method: str, label: str, path: str, body: bytes | None, state: RetryState) -> Exchanged:
        response = self._handle_for(path).remote(method, path, self._attempt_headers(state), body)
        return response.result(timeout_s=self._attempt_timeout(state))


class AsyncRayRewardClient(_HandleBase, AsyncRewardClient):
    """Asyncio twin of :class:`RayRewardClient` (split requests of one call go out concurrently)."""

    def __init__(
        self, app_name: str = DEFAULT_APP, *, deployment: str = DEFAULT_DEPLOYMENT, handle: Any | None = None,
        model: str | None = None, max_concurrency: int = 4, **kwargs: Any,
    ) -> None:
        _ClientBase.__init__(self, _PLACEHOLDER_URL, model=model, **kwargs)
        self.max_concurrency = max(1, max_concurrency)
        self._attach(app_name, deployment, handle, model)

    async def aclose(self) -> None:
        """Nothing to close: the handle belongs to Ray."""

    async def _exchange(self, method: str, label: str, path: str, body: bytes | None, state: RetryState) -> Exchanged:
        response = self._handle_for(path).remote(method, path, self._attempt_headers(state), body)
        try:
            return await asyncio.wait_for(response, self._attempt_timeout(state))
        except (*self._transport_errors, asyncio.CancelledError):
            response.cancel()  # a replica still working on an abandoned attempt would score it for nothing
            raise


async def ray_coalescer(
    app_name: str = DEFAULT_APP, *, flush_ms: float = DEFAULT_FLUSH_MS, max_batch: int = DEFAULT_MAX_BATCH,
    **client_kwargs: Any,
) -> Coalescer:
    """The running loop's coalescer over the handle: ``await (await ray_coalescer()).score(item)``
    from hundreds of concurrent one-sample calls goes out as a few batched calls."""
    key = ("ray", app_name, float(flush_ms), int(max_batch), tuple(sorted(client_kwargs.items())))
    return await per_loop(
        key, lambda: Coalescer(AsyncRayRewardClient(app_name, **client_kwargs), flush_ms / 1000.0, max_batch)
    )


__all__ = ["AsyncRayRewardClient", "RayRewardClient", "ray_coalescer"]
