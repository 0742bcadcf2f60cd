"""Reading a JSON request body into a model: one reader, one set of answers, for every route.

``/score``, ``/get_reward`` and ``/admin/reload`` all read their body here, after the bearer
token is checked, so they agree on what a bad body gets: **422** ``invalid_request`` with field
``body`` for a body that is not JSON, not UTF-8, nested more than 200 levels deep or sent without
``Content-Type: application/json``; 422 naming the field for a JSON body of the wrong shape.
"""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from reward_server.errors import InvalidRequest, summarise
from reward_server.items.errors import validation_details
from reward_server.items.json_values import TOO_DEEP, loads_lenient

ModelT = TypeVar("ModelT", bound=BaseModel)


def body_error(message: str) -> InvalidRequest:
    return InvalidRequest.for_field("body", message)


async def read_json_body(request: Request, model: type[ModelT]) -> ModelT:
    """Validate the raw body bytes straight into ``model`` with pydantic-core.

    The hot path of a trainer that sends hundreds of one-item requests: parsing bytes in one
    step skips FastAPI's dependency solving, ``json.loads`` and a second pass over the dicts.
    JSON is only read when declared (``Content-Type: application/json``), as FastAPI does, so a
    browser cannot post here cross-site without a CORS preflight.
    """
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";", 1)[0].strip().lower()
    if not (media == "application/json" or media.endswith("+json")):
        raise body_error("body was not read as JSON: send it with 'Content-Type: application/json'")
    body = await request.body()
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        return _second_look(exc, body, model)


def parse_json(body: bytes, reason: str | None = None) -> Any:
    """A body as a JSON value (lone surrogates allowed), or the 422 ``body`` error: not UTF-8, too
    deep, or not JSON (with ``reason``, the strict parser's words, when it already said why)."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as bad:
        raise body_error(f"is not valid UTF-8 (byte 0x{body[bad.start]:02x} at offset {bad.start})") from None
    try:
        return loads_lenient(body)
    except ValueError as exc:
        message = TOO_DEEP if str(exc) == TOO_DEEP else f"body is not valid JSON: {reason or exc}"
        raise body_error(message) from None


def _second_look(exc: ValidationError, body: bytes, model: type[ModelT]) -> ModelT:
    """The error path only: say precisely what is wrong, or accept what only the strict parser refused."""
    errors = exc.errors()
    invalid = next((e for e in errors if e["type"] == "json_invalid"), None)
    if invalid is None:  # valid JSON of the wrong shape: name each field (and echo item ids)
        try:
            parsed: Any = loads_lenient(body)
        except ValueError:
            parsed = None
        details = validation_details(errors, parsed)
        raise InvalidRequest(summarise(details), details) from None
    reason = str(invalid.get("ctx", {}).get("error", invalid.get("msg")))
    if "recursion limit" in reason:
        raise body_error(TOO_DEEP) from None
    # JSON that only pydantic-core's strict parser refuses (a lone surrogate "\ud800"): validate
    # the parsed object, so the per-item checks can name the item and field.
    parsed = parse_json(body, reason)
    try:
        return model.model_validate(parsed)
    except ValidationError as inner:
        details = validation_details(inner.errors(), parsed)
        raise InvalidRequest(summarise(details), details) from None
