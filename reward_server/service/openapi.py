"""The OpenAPI document: every status a route can answer, its auth, and the bodies read by hand.

Routes read their bodies with :func:`reward_server.service.json_body.read_json_body` (after the
token check), which FastAPI cannot see, so the request schemas are added here. ``security`` is
declared on an operation only when this server enforces a token for it (the document describes
the running server, and a client generated from it must not send a token nobody checks).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from reward_server.items.settings import Settings
from reward_server.service.schemas import ErrorResponse

SCORING_ERRORS = (401, 413, 422, 429, 503)  # /score and /get_reward

_WHEN = {
    401: "Missing or wrong bearer token (only when the server has one configured).",
    404: "The admin API is disabled (no REWARD_ADMIN_TOKEN).",
    409: "Another reload is in progress.",
    413: "Body larger than REWARD_MAX_BODY_BYTES, or more items than REWARD_MAX_ITEMS_PER_REQUEST.",
    422: "Invalid body or item: not JSON, not UTF-8, nested > 200 levels, wrong field types or values. "
    "Details name the item and field.",
    429: "The scoring queue is full (REWARD_QUEUE_MAX_ITEMS); retry later.",
    503: "Not ready: starting, or shutting down.",
}

SECURITY_SCHEMES = {
    "scoringToken": {"type": "http", "scheme": "bearer", "description": "REWARD_API_TOKEN"},
    "scoringTokenQuery": {
        "type": "apiKey", "in": "query", "name": "token",
        "description": "REWARD_API_TOKEN as ?token= (for OpenRLHF, whose client sends no headers)",
    },
    "adminToken": {"type": "http", "scheme": "bearer", "description": "REWARD_ADMIN_TOKEN"},
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: each error status with the shared error body and when it happens."""
    return {code: {"model": ErrorResponse, "description": _WHEN[code]} for code in codes}


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra=`` for a route that reads its body by hand."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
        }
    }


def install_openapi(app: FastAPI, settings: Settings, *models: type[BaseModel]) -> None:
    """Add the hand-read body schemas, the security schemes and per-route security to the document."""
    original = app.openapi
    security = {
        ("/score", "post"): [{"scoringToken": []}] if settings.api_token else None,
        ("/get_reward", "post"): [{"scoringToken": []}, {"scoringTokenQuery": []}] if settings.api_token else None,
        ("/admin/reload", "post"): [{"adminToken": []}] if settings.admin_token else None,
    }

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = original()  # FastAPI caches it in app.openapi_schema
            components = document.setdefault("components", {})
            schemas = components.setdefault("schemas", {})
            for model in models:
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                schemas.update(schema.pop("$defs", {}))
                schemas[model.__name__] = schema
            components["securitySchemes"] = SECURITY_SCHEMES
            for (path, method), requirement in security.items():
                operation = document.get("paths", {}).get(path, {}).get(method)
                if operation is not None and requirement is not None:
                    operation["security"] = requirement
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
