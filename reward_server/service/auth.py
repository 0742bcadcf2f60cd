"""Bearer-token checks for scoring and admin calls (SPEC §11), one implementation for every route."""

from __future__ import annotations

import secrets

from fastapi import Request

from reward_server.errors import Unauthorized


def check_bearer(request: Request, token: str | None, realm: str, *, query_param: str | None = None) -> None:
    """401 unless the request carries ``token``: ``Authorization: Bearer <token>``, or, where a
    client cannot send headers (OpenRLHF), ``?<query_param>=<token>`` when no bearer header is sent."""
    if token is None:
        return
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        supplied = value.strip()
    elif query_param is not None:
        supplied = request.query_params.get(query_param, "")
    else:
        supplied = None
    # Bytes: compare_digest refuses non-ASCII str, and a client's header must never cause a 500.
    if supplied is None or not secrets.compare_digest(supplied.encode(), token.encode()):
        also = f" (or ?{query_param}=<token>)" if query_param is not None else ""
        raise Unauthorized(f"{realm} requires 'Authorization: Bearer <token>'{also}")
