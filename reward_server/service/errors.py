"""Rendering :mod:`reward_server.errors` as HTTP: one JSON shape for every failure (SPEC §11).

    {"error": {"type": "invalid_request", "message": "...",
               "details": [{"item": 3, "id": "r3", "field": "task_type", "message": "..."}]}}

A client mistake is a 4xx; a 500 only ever means a bug here, and says so. The status, the type and
any ``Retry-After`` come from the error's class. Whoever renders an error also writes its type into
the request's ``scope["state"]``, where the metrics middleware reads the ``reason`` label: it never
has to parse a response body to learn why a request failed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import Scope

from reward_server.errors import (
    ClientClosed,
    HttpError,
    InternalError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    RewardServerError,
    summarise,
)
from reward_server.items.errors import validation_details

log = logging.getLogger("reward_server")

ERROR_TYPE_KEY = "reward_error_type"  # in scope["state"]: the metrics' reason label


def note_error_type(scope: Scope | None, type_: str) -> None:
    """Tell the metrics middleware why this request failed."""
    if scope is not None:
        scope.setdefault("state", {})[ERROR_TYPE_KEY] = type_


def error_type_of(scope: Scope) -> str | None:
    state = scope.get("state")
    return state.get(ERROR_TYPE_KEY) if isinstance(state, dict) else None


def render(exc: RewardServerError, scope: Scope | None = None) -> JSONResponse:
    """The JSON error response of ``exc``, with its status and headers."""
    note_error_type(scope, exc.type)
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers or None)


def _from_framework(exc: StarletteHTTPException) -> RewardServerError:
    headers = dict(exc.headers) if exc.headers else None
    if exc.status_code == 404:
        return NotFound(str(exc.detail), headers=headers)
    if exc.status_code == 405:
        return MethodNotAllowed(str(exc.detail), headers=headers)
    return HttpError(str(exc.detail), exc.status_code, headers=headers)


def _from_validation(exc: RequestValidationError) -> RewardServerError:
    details = validation_details(exc.errors(), getattr(exc, "body", None))
    return InvalidRequest(summarise(details), details)


#: What each exception the app may see becomes, by class; looked up along the MRO as Starlette does.
_CONVERT: dict[type[Exception], Callable[[Any], RewardServerError]] = {
    RewardServerError: lambda exc: exc,
    ClientDisconnect: lambda exc: ClientClosed("the client went away before its request was read"),
    RequestValidationError: _from_validation,
    StarletteHTTPException: _from_framework,
}


def handled_error_response(exc: Exception, scope: Scope | None = None) -> JSONResponse | None:
    """The response the app gives ``exc``, or None for an unexpected exception (a 500). Shared by
    the registered handlers and the direct routes (``direct_routes.py``), so both answer alike."""
    for cls in type(exc).__mro__:
        convert = _CONVERT.get(cls)
        if convert is not None:
            return render(convert(exc), scope)
    return None


def internal_error_response(exc: Exception, scope: Scope | None = None) -> JSONResponse:
    """The 500 of a bug, logged with its traceback."""
    log.exception("internal error", exc_info=exc)
    return render(InternalError(f"internal error ({type(exc).__name__}); this is a server bug"), scope)


def install_error_handlers(app: FastAPI) -> None:
    for cls in _CONVERT:

        async def _handle(request: Request, exc: Exception) -> JSONResponse:
            response = handled_error_response(exc, request.scope)
            assert response is not None
            return response

        app.add_exception_handler(cls, _handle)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        return internal_error_response(exc, request.scope)
