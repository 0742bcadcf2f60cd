"""One HTTP request through an ASGI app inside this process: what a Serve ``DeploymentHandle`` call
runs on the replica, so that the handle path answers exactly what HTTP answers (same routes, auth,
limits, error bodies, metrics) without an HTTP hop, a proxy or a socket."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from starlette.types import ASGIApp, Message


async def asgi_request(
    app: ASGIApp, method: str, path: str, headers: Mapping[str, str], body: bytes | None
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of ``method path`` with ``body``, as an HTTP server would get them."""
    content = body or b""
    raw_headers = [(k.lower().encode("latin-1"), str(v).encode("latin-1")) for k, v in headers.items()]
    if content or method.upper() in ("POST", "PUT", "PATCH"):
        raw_headers.append((b"content-length", str(len(content)).encode()))
    raw_path, _, query = path.partition("?")
    scope: dict[str, Any] = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
        "method": method.upper(), "scheme": "http", "path": raw_path, "raw_path": raw_path.encode(),
        "query_string": query.encode(), "root_path": "", "headers": raw_headers,
        "client": ("127.0.0.1", 0), "server": ("ray-serve-handle", 0), "state": {},
    }
    sent_body = False
    finished = asyncio.Event()
    status = 500
    response_headers: dict[str, str] = {}
    chunks: list[bytes] = []

    async def receive() -> Message:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": content, "more_body": False}
        await finished.wait()  # a route listening for a disconnect hears it once the answer is out
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])
            for key, value in message.get("headers", []):
                response_headers[key.decode("latin-1")] = value.decode("latin-1")
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                finished.set()

    try:
        await app(scope, receive, send)
    finally:
        finished.set()
    return status, response_headers, b"".join(chunks)
