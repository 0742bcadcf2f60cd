"""The OpenAPI document: every status a route can answer, its auth, and the bodies read by hand.

Routes read their bodies with :func:`reward_server.service.json_body.read_json_body` (after the
token check), which FastAPI cannot see, so each says so with :func:`route_doc` and the request
schemas are added here. ``security`` is declared on an operation only when this server enforces a
token for it (the document describes the running server, and a client generated from it must not
send a token nobody checks).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from reward_server.errors import (
    BodyTooLarge,
    InvalidItem,
    InvalidRequest,
    NotReady,
    Overloaded,
    RewardServerError,
    StateUnavailable,
    TooManyItems,
    Unauthorized,
)
from reward_server.items.settings import Settings
from reward_server.service.schemas import ErrorResponse

#: What /score, /get_reward and /slime may answer besides 200.
SCORING_ERRORS: tuple[type[RewardServerError], ...] = (
    Unauthorized, BodyTooLarge, TooManyItems, InvalidRequest, InvalidItem, Overloaded, NotReady, StateUnavailable,
)

SECURITY_SCHEMES = {
    "scoringToken": {"type": "http", "scheme": "bearer", "description": "REWARD_API_TOKEN"},
    "scoringTokenQuery": {
        "type": "apiKey", "in": "query", "name": "token",
        "description": "REWARD_API_TOKEN as ?token= (for OpenRLHF, whose client sends no headers)",
    },
    "adminToken": {"type": "http", "scheme": "bearer", "description": "REWARD_ADMIN_TOKEN"},
}


def error_responses(*kinds: type[RewardServerError]) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: each status its error kinds answer with, the shared error body,
    and each ``error.type`` with when it happens (from the kinds' summaries, reward_server/errors.py)."""
    by_status: dict[int, list[type[RewardServerError]]] = {}
    for kind in kinds:
        by_status.setdefault(kind.status, []).append(kind)
    return {
        status: {
            "model": ErrorResponse,
            "description": " ".join(f"`{kind.type}`: {kind.summary}" for kind in members),
        }
        for status, members in sorted(by_status.items())
    }


def json_body(model: type[BaseModel] | dict[str, Any]) -> dict[str, Any]:
    """``openapi_extra=`` for a route that reads its body by hand (a model, or a JSON schema)."""
    schema = model if isinstance(model, dict) else {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


_AUTH_KEY = "x-reward-auth"


def route_doc(body: type[BaseModel] | dict[str, Any] | None = None, auth: str | None = None) -> dict[str, Any]:
    """``openapi_extra=`` for a route: its hand-read body and which token guards it (``scoring``,
    ``scoring+query`` where ``?token=`` is accepted too, or ``admin``)."""
    extra = json_body(body) if body is not None else {}
    if auth is not None:
        extra[_AUTH_KEY] = auth
    return extra


def _security(auth: str, settings: Settings) -> list[dict[str, list[str]]] | None:
    if auth == "admin":
        return [{"adminToken": []}] if settings.admin_token else None
    if not settings.api_token:
        return None
    return [{"scoringToken": []}, {"scoringTokenQuery": []}] if auth == "scoring+query" else [{"scoringToken": []}]


def _task_type_enums(schemas: dict[str, Any], names: list[str]) -> None:
    """Every ``task_type`` property of the body schemas lists the server's registry: the names and
    aliases it accepts (case and separators are folded, which an enum cannot say)."""
    for schema in schemas.values():
        prop = schema.get("properties", {}).get("task_type") if isinstance(schema, dict) else None
        if not isinstance(prop, dict):
            continue
        variants = prop.get("anyOf")
        if variants:  # optional: string or null
            for variant in variants:
                if variant.get("type") == "string":
                    variant["enum"] = list(names)
        else:
            prop["enum"] = list(names)


def install_openapi(app: FastAPI, settings: Settings, *models: type[BaseModel], task_types: list[str]) -> None:
    """Add the hand-read body schemas, the security schemes, per-route security and the registry's
    task types to the document."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = original()  # FastAPI caches it in app.openapi_schema
            components = document.setdefault("components", {})
            schemas = components.setdefault("schemas", {})
            for model in models:
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                schemas.update(schema.pop("$defs", {}))
                schemas[model.__name__] = schema
            _task_type_enums(schemas, task_types)
            components["securitySchemes"] = SECURITY_SCHEMES
            for operations in document.get("paths", {}).values():
                for operation in operations.values():
                    auth = operation.pop(_AUTH_KEY, None)
                    requirement = None if auth is None else _security(auth, settings)
                    if requirement is not None:
                        operation["security"] = requirement
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
