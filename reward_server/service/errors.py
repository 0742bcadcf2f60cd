"""One JSON error shape for every failure, naming the item and the field (SPEC §11).

    {"error": {"type": "invalid_request", "message": "...",
               "details": [{"item": 3, "id": "r3", "field": "task_type", "message": "..."}]}}

A client mistake is a 4xx; a 500 only ever means a bug here, and says so.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("reward_server")

MAX_DETAILS = 50

_EXPECTED = {
    "response": "a string",
    "task_type": "a string",
    "ground_truth": "a string, number, list or object",
    "id": "a string or an integer",
    "group_id": "a string or an integer",
    "prompt_id": "a string or an integer",
    "items": "a list of items",
}
_JSON_TYPES = {dict: "object", list: "array", str: "string", int: "integer", float: "number", bool: "boolean"}


class ApiError(StarletteHTTPException):
    """Raised anywhere in the HTTP layer; rendered as the JSON error shape with this status.

    An HTTPException subclass so that FastAPI passes it through untouched even when raised while
    the body is being read (it turns any other exception there into a generic 400).
    """

    def __init__(self, status: int, type_: str, message: str, details: Sequence[dict[str, Any]] = ()) -> None:
        super().__init__(status, message)
        self.status = status
        self.type = type_
        self.message = message
        self.details = list(details)[:MAX_DETAILS]


def error_response(
    status: int, type_: str, message: str, details: Sequence[dict[str, Any]] = (), headers: dict | None = None
) -> JSONResponse:
    body = {"error": {"type": type_, "message": message, "details": list(details)}}
    return JSONResponse(body, status_code=status, headers=headers)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return _JSON_TYPES.get(type(value), type(value).__name__)


def validation_details(errors: Sequence[dict[str, Any]], body: Any) -> list[dict[str, Any]]:
    """Turn pydantic's error list into one detail per (item, field), with a message a user can act on."""
    details: dict[tuple[int | None, str], dict[str, Any]] = {}
    for err in errors:
        loc = [part for part in err.get("loc", ()) if part != "body"]
        item: int | None = None
        if len(loc) >= 2 and loc[0] == "items" and isinstance(loc[1], int):
            item = loc[1]
            field = str(loc[2]) if len(loc) > 2 else "item"
        elif loc and loc[0] == "options" and len(loc) > 1:
            field = f"options.{loc[1]}"
        else:
            field = str(loc[0]) if loc and not isinstance(loc[0], int) else "body"
        if (item, field) in details:
            continue  # a union reports one error per member; one line per field is enough
        kind = err.get("type", "")
        if kind == "missing":
            message = "field required"
        elif kind == "json_invalid":
            message = f"body is not valid JSON: {err.get('ctx', {}).get('error', err.get('msg'))}"
        elif field == "body" and isinstance(err.get("input"), (bytes, str)):
            message = "body was not read as JSON: send it with 'Content-Type: application/json'"
        elif field == "body":
            message = "body must be a JSON object like {\"items\": [...], \"options\": {...}}"
        elif field == "item":
            message = f"each item must be a JSON object, got {_json_type(err.get('input'))}"
        elif isinstance(err.get("input"), float) and not math.isfinite(err["input"]):
            message = f"must be a finite number, got {err['input']}"
        elif field in _EXPECTED:
            message = f"must be {_EXPECTED[field]}, got {_json_type(err.get('input'))}"
        else:
            message = str(err.get("msg", "invalid value"))
        detail: dict[str, Any] = {"item": item, "field": field, "message": message}
        if item is not None and isinstance(body, dict):
            items = body.get("items")
            if (
                isinstance(items, list)
                and item < len(items)
                and isinstance(items[item], dict)
                and isinstance(items[item].get("id"), (str, int))
            ):
                detail["id"] = items[item]["id"]
        details[(item, field)] = detail
    return list(details.values())[:MAX_DETAILS]


def summarise(details: Sequence[dict[str, Any]]) -> str:
    first = details[0]
    where = f"item {first['item']}: " if first.get("item") is not None else ""
    more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
    return f"{where}{first['field']}: {first['message']}{more}"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.type, exc.message, exc.details)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = validation_details(exc.errors(), getattr(exc, "body", None))
        return error_response(422, "invalid_request", summarise(details), details)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, "http_error", str(exc.detail), headers=exc.headers)

    @app.exception_handler(Exception)
    async def _internal_error(_: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error")
        return error_response(500, "internal_error", f"internal error ({type(exc).__name__}); this is a server bug")
