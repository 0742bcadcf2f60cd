"""Slow and abundant clients: deadlines on reading a request, and a cap on connections.

uvicorn keeps a connection for as long as its client trickles bytes: a thousand clients sending
one header byte a second (or one body byte a second) held a thousand connections and file
descriptors for as long as they liked. Three guards, set from the settings, on uvicorn's own
httptools protocol (the one ``reward-server serve`` runs):

* ``header_timeout_seconds``: from a connection's first byte (or its opening), the request line and
  headers must be complete within this; else 408 and the connection closes. It also bounds a
  connection that opens and sends nothing.
* ``body_timeout_seconds``: from the end of the headers, the whole body must arrive within this;
  else 408 and the connection closes (the request is never scored).
* ``max_connections``: one more connection than this is answered 503 at once and closed, before
  anything is read, with the service's JSON error body and ``Retry-After``.

Everything else (keep-alive idle, the body size limit, flow control) stays uvicorn's. In Ray mode
the Serve proxy terminates HTTP, so these guards apply to ``reward-server serve`` only.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from reward_server.errors import RequestTimeout, ServerBusy


def _answer(transport: asyncio.Transport, error: Any) -> None:
    body = json.dumps(error.body()).encode()
    head = [
        f"HTTP/1.1 {error.status} {'Request Timeout' if error.status == 408 else 'Service Unavailable'}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
        *(f"{name}: {value}" for name, value in error.headers.items()),
    ]
    transport.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    transport.close()


class GuardedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with read deadlines and a connection cap (module docstring)."""

    header_timeout: float = 10.0
    body_timeout: float = 60.0
    max_connections: int = 4096

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        if len(self.connections) > self.max_connections:
            self.logger.warning("connection cap of %d reached: answering 503", self.max_connections)
            _answer(transport, ServerBusy(
                f"the server holds {self.max_connections} connections (--max-connections); retry shortly"
            ))
            return
        self._arm(self.header_timeout, "headers")

    def _arm(self, seconds: float, stage: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expired, stage, seconds)

    def _disarm(self) -> None:
        deadline = getattr(self, "_deadline", None)
        if deadline is not None:
            deadline.cancel()
            self._deadline = None

    def _expired(self, stage: str, seconds: float) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and self.cycle.response_started:
            self.transport.close()
            return
        what = "request line and headers" if stage == "headers" else "request body"
        setting = "header_timeout_seconds" if stage == "headers" else "body_timeout_seconds"
        if self.cycle is not None:
            self.cycle.disconnected = True  # the app's receive() sees the client gone
            self.cycle.message_event.set()
        _answer(self.transport, RequestTimeout(f"the {what} did not arrive within {seconds:g} s ({setting})"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._deadline is None and (self.cycle is None or self.cycle.response_complete):
            self._arm(self.header_timeout, "headers")  # a keep-alive connection's next request
        super().data_received(data)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if self.cycle is not None and self.cycle.more_body:
            self._arm(self.body_timeout, "body")
        else:
            self._disarm()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()


def guarded_protocol(header_timeout: float, body_timeout: float, max_connections: int) -> type[GuardedHttpTools]:
    """The protocol class for uvicorn's ``http=``, with this server's limits."""
    return type("GuardedHttpTools", (GuardedHttpTools,), {
        "header_timeout": header_timeout, "body_timeout": body_timeout, "max_connections": max_connections,
    })


def server_config(app: Any, settings: Any, **options: Any) -> uvicorn.Config:
    """uvicorn's configuration for the service: its log settings, the graceful-shutdown grace and
    the guarded protocol (one place for ``reward-server serve`` and the tests)."""
    from reward_server.service.shutdown import SHUTDOWN_GRACE_SECONDS

    return uvicorn.Config(
        app,
        log_level=settings.log_level,
        access_log=settings.access_log,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
        http=guarded_protocol(settings.header_timeout_seconds, settings.body_timeout_seconds, settings.max_connections),
        **options,
    )


__all__ = ["GuardedHttpTools", "guarded_protocol", "server_config"]
