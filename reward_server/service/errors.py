"""One JSON error shape for every failure, naming the item and the field (SPEC §11).

    {"error": {"type": "invalid_request", "message": "...",
               "details": [{"item": 3, "id": "r3", "field": "task_type", "message": "..."}]}}

A client mistake is a 4xx; a 500 only ever means a bug here, and says so. The shape and the
pydantic-error wording live in ``reward_server.items.errors`` (shared with the offline commands).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from reward_server.items.errors import (
    MAX_DETAILS,
    RequestRejected,
    summarise,
    validation_details,
)

log = logging.getLogger("reward_server")


class ApiError(RequestRejected, StarletteHTTPException):
    """Raised anywhere in the HTTP layer; rendered as the JSON error shape with this status.

    Also an HTTPException so that FastAPI passes it through untouched even when raised while
    the body is being read (it turns any other exception there into a generic 400).
    """

    def __init__(self, status: int, type_: str, message: str, details: Sequence[dict[str, Any]] = ()) -> None:
        StarletteHTTPException.__init__(self, status, message)
        self.status = status
        self.type = type_
        self.message = message
        self.details = list(details)[:MAX_DETAILS]


def error_response(
    status: int, type_: str, message: str, details: Sequence[dict[str, Any]] = (), headers: dict | None = None
) -> JSONResponse:
    body = {"error": {"type": type_, "message": message, "details": list(details)}}
    return JSONResponse(body, status_code=status, headers=headers)


def _rejected(exc: RequestRejected) -> JSONResponse:
    return error_response(exc.status, exc.type, exc.message, exc.details)


def _validation_error(exc: RequestValidationError) -> JSONResponse:
    details = validation_details(exc.errors(), getattr(exc, "body", None))
    return error_response(422, "invalid_request", summarise(details), details)


def _http_error(exc: StarletteHTTPException) -> JSONResponse:
    return error_response(exc.status_code, "http_error", str(exc.detail), headers=exc.headers)


#: The client-error handlers, by exception class; looked up along the MRO as Starlette does.
_HANDLERS: dict[type[Exception], Callable[[Any], JSONResponse]] = {
    RequestRejected: _rejected,
    RequestValidationError: _validation_error,
    StarletteHTTPException: _http_error,
}


def handled_error_response(exc: Exception) -> JSONResponse | None:
    """The response the app's handlers give ``exc``, or None for an unexpected exception (a 500).
    Shared by the registered handlers and the direct routes (``direct_routes.py``), so both answer alike."""
    for cls in type(exc).__mro__:
        handler = _HANDLERS.get(cls)
        if handler is not None:
            return handler(exc)
    return None


def internal_error_response(exc: Exception) -> JSONResponse:
    """The 500 of a bug, logged with its traceback."""
    log.exception("internal error", exc_info=exc)
    return error_response(500, "internal_error", f"internal error ({type(exc).__name__}); this is a server bug")


def install_error_handlers(app: FastAPI) -> None:
    for cls, handler in _HANDLERS.items():

        async def _handle(_: Request, exc: Exception, handler: Callable[[Any], JSONResponse] = handler) -> JSONResponse:
            return handler(exc)

        app.add_exception_handler(cls, _handle)

    @app.exception_handler(Exception)
    async def _internal_error(_: Request, exc: Exception) -> JSONResponse:
        return internal_error_response(exc)
