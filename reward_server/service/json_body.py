"""Reading a JSON request body into a model: one reader, one set of answers, for every route.

``/score``, ``/get_reward`` and ``/admin/reload`` all read their body here, after the bearer
token is checked, so they agree on what a bad body gets: **422** ``invalid_request`` with field
``body`` for a body that is not JSON, not UTF-8, nested more than 200 levels deep or sent without
``Content-Type: application/json``; 422 naming the field for a JSON body of the wrong shape.
"""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from reward_server.errors import InvalidRequest, TooManyItems, summarise
from reward_server.items.errors import validation_details
from reward_server.items.json_values import TOO_DEEP, count_elements, loads_lenient

ModelT = TypeVar("ModelT", bound=BaseModel)


def body_error(message: str) -> InvalidRequest:
    return InvalidRequest.for_field("body", message)


#: Bodies larger than this are validated on a worker thread: the event loop (health checks, other
#: trainers' one-item requests) never waits more than a few milliseconds for one request's parsing.
OFFLOAD_BYTES = 64 << 10


def require_json(request: Request) -> None:
    """JSON is only read when declared (``Content-Type: application/json``), as FastAPI does, so a
    browser cannot post here cross-site without a CORS preflight."""
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";", 1)[0].strip().lower()
    if not (media == "application/json" or media.endswith("+json")):
        raise body_error("body was not read as JSON: send it with 'Content-Type: application/json'")


def check_count(body: bytes, key: str | None, limit: int, field: str) -> None:
    """413 when the array at ``key`` (None: the body itself) holds more than ``limit`` elements,
    found before any model is built (json_values.count_elements: a million tiny items cost
    milliseconds, not seconds and a gigabyte)."""
    count = count_elements(body, key, limit)
    if count is not None and count > limit:
        raise TooManyItems(
            f"{field}: more than {limit} in one request; the limit is {limit} "
            "(split the batch or raise REWARD_MAX_ITEMS_PER_REQUEST)",
            [{"item": None, "field": field, "message": f"at most {limit}"}],
        )


async def read_json_body(
    request: Request, model: type[ModelT], *, count: tuple[str | None, int] | None = None
) -> ModelT:
    """Validate the raw body bytes straight into ``model`` with pydantic-core.

    The hot path of a trainer that sends hundreds of one-item requests: parsing bytes in one
    step skips FastAPI's dependency solving, ``json.loads`` and a second pass over the dicts.
    ``count`` (a key and a limit) refuses an over-long list first (413); a large body is validated
    off the event loop.
    """
    require_json(request)
    body = await request.body()
    if count is not None:
        check_count(body, count[0], count[1], count[0] or "body")
    if len(body) > OFFLOAD_BYTES:
        return await asyncio.to_thread(validate_json, body, model)
    return validate_json(body, model)


def validate_json(body: bytes, model: type[ModelT]) -> ModelT:
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
