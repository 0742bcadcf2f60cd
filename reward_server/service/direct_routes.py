"""The per-sample scoring routes dispatched straight to their endpoints, ahead of FastAPI's router.

Trainers such as slime and OpenRLHF send one HTTP request per sample, hundreds at once. Through the
full Starlette/FastAPI stack each of those paid for seven middleware layers (telemetry, two body
limits, two exception layers, an exit stack), a walk over every route and included router to find
the match, and dependency solving for an endpoint whose only parameter is the ``Request``: about
half of the server's per-request CPU. The batched path pays it once per 512 items, so it was the
main reason 512 one-item requests were slower than one 512-item request.

:class:`DirectRoutes` sits just inside the request-metrics middleware and sends ``POST`` to those
paths to the *same* endpoint function the FastAPI route declares (the route stays, for OpenAPI and
for every other method), with what the skipped layers did for them done here: the body-size limit
(the same :class:`BodySizeLimit`), ``scope["route"]`` for the metrics label, the app's error
rendering (:func:`handled_error_response`, shared with the registered handlers) and the 500 of an
unexpected exception, logged and re-raised as Starlette's error middleware does. Anything else goes
to the full stack unchanged.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reward_server.service.body_limit import BodySizeLimit
from reward_server.service.errors import handled_error_response, internal_error_response

Endpoint = Callable[[Request], Awaitable[Response]]


def _request_only(route: APIRoute) -> bool:
    """True when FastAPI would call the endpoint with nothing but the ``Request``: no path, query,
    header, cookie or body parameters, no dependencies, an ``async def``."""
    dep = route.dependant
    return (
        dep.request_param_name is not None
        and not (dep.path_params or dep.query_params or dep.header_params or dep.cookie_params or dep.body_params)
        and not dep.dependencies
        and inspect.iscoroutinefunction(route.endpoint)
        and len(inspect.signature(route.endpoint).parameters) == 1
    )


def all_routes(routes: Iterable[Any]) -> Iterator[Any]:
    """Every route, in matching order, also inside included routers (FastAPI >= 0.16x keeps an
    included router as one entry holding ``original_router``; older versions copy its routes)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from all_routes(inner.routes)
        else:
            yield route


class DirectRoutes:
    """Pure ASGI: ``POST`` to one of ``paths`` runs its endpoint here; everything else goes to ``app``."""

    def __init__(self, app: ASGIApp, fastapi_app: FastAPI, paths: Iterable[str], max_body_bytes: int) -> None:
        self.app = app
        self.routes: dict[str, tuple[APIRoute, ASGIApp]] = {}
        for route in all_routes(fastapi_app.router.routes):
            if isinstance(route, APIRoute) and route.path in paths and route.methods == {"POST"} and route.path not in self.routes:
                if not _request_only(route):
                    raise TypeError(f"{route.path}: a direct route's endpoint must take only the Request")
                self.routes[route.path] = (route, BodySizeLimit(self._endpoint_app(route.endpoint), max_bytes=max_body_bytes))
        missing = set(paths) - set(self.routes)
        if missing:
            raise LookupError(f"no POST route for {sorted(missing)}")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            hit = self.routes.get(scope["path"])
            if hit is not None:
                scope["route"] = hit[0]  # what the router would record: the metrics label reads it
                scope["endpoint"] = hit[0].endpoint
                await hit[1](scope, receive, send)
                return
        await self.app(scope, receive, send)

    @staticmethod
    def _endpoint_app(endpoint: Endpoint) -> ASGIApp:
        async def run(scope: Scope, receive: Receive, send: Send) -> None:
            started = False

            async def send_tracked(message: Message) -> None:
                nonlocal started
                if message["type"] == "http.response.start":
                    started = True
                await send(message)

            try:
                try:
                    response = await endpoint(Request(scope, receive, send_tracked))
                except Exception as exc:
                    handled = handled_error_response(exc, scope)
                    if handled is None:
                        raise
                    response = handled
                await response(scope, receive, send_tracked)
            except Exception as exc:
                if not started:  # as Starlette's ServerErrorMiddleware: answer 500, then re-raise
                    await internal_error_response(exc, scope)(scope, receive, send)
                raise

        return run


def install_direct_routes(app: FastAPI, paths: Iterable[str], max_body_bytes: int) -> None:
    """Put :class:`DirectRoutes` around the app's middleware stack (built lazily, once every route
    exists). Call it before the metrics middleware installs itself, so that it stays outermost."""
    build = app.build_middleware_stack
    wanted = tuple(paths)

    def build_with_direct_routes() -> ASGIApp:
        return DirectRoutes(build(), app, wanted, max_body_bytes)

    app.build_middleware_stack = build_with_direct_routes  # type: ignore[method-assign]


__all__ = ["DirectRoutes", "all_routes", "install_direct_routes"]
