"""Refuse oversized request bodies with 413 before they are buffered or parsed.

Checked twice: against Content-Length up front, and against the bytes actually received, so a
chunked upload without a length cannot slip past the limit.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reward_server.errors import BodyTooLarge
from reward_server.service.errors import render


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _error(self) -> BodyTooLarge:
        return BodyTooLarge(
            f"body: request body exceeds {self.max_bytes} bytes (REWARD_MAX_BODY_BYTES)",
            [{"item": None, "field": "body", "message": f"at most {self.max_bytes} bytes"}],
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    too_large = int(value) > self.max_bytes
                except ValueError:
                    too_large = False
                if too_large:
                    await render(self._error(), scope)(scope, receive, send)
                    return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._error()  # rendered by the app's error handlers
            return message

        await self.app(scope, limited_receive, send)
