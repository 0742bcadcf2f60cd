"""Shutdown the way load balancers, Kubernetes and Ray Serve expect (SIGTERM, then a drain).

On the first SIGTERM ``/readyz`` answers 503 at once, while the server keeps accepting and
serving requests for ``drain_seconds``: long enough for a load balancer or the Kubernetes
endpoints controller to stop routing here. Then it stops accepting connections, finishes the
requests in flight (up to ``SHUTDOWN_GRACE_SECONDS``) and exits 0. A first SIGINT (Ctrl-C at a
terminal) skips the drain period: nobody is routing traffic to an interactive run. A second
SIGTERM or SIGINT, at any point, stops at once.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from types import FrameType

import uvicorn

log = logging.getLogger("reward_server")

#: After the drain: how long requests already in flight may take to finish before they are cancelled.
SHUTDOWN_GRACE_SECONDS = 30


class DrainingServer(uvicorn.Server):
    """A uvicorn server whose SIGTERM means "drain, then stop", not "stop accepting now"."""

    def __init__(self, config: uvicorn.Config, *, drain_seconds: float, on_drain: Callable[[], None]) -> None:
        super().__init__(config)
        self.drain_seconds = drain_seconds
        self._on_drain = on_drain
        self._stop_at: float | None = None  # monotonic time at which the listener closes

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Runs in the main thread between bytecodes: only flags and timestamps are touched here;
        # ``on_tick`` (every 0.1 s on the event loop) acts on them. Signals are not re-raised
        # after shutdown (uvicorn's default), so a clean drain exits 0.
        if self._stop_at is not None:
            log.warning("second %s: stopping now", signal.Signals(sig).name)
            self.force_exit = True
            self.should_exit = True
            return
        self._on_drain()
        drain = self.drain_seconds if sig == signal.SIGTERM else 0.0
        self._stop_at = time.monotonic() + drain
        if drain > 0:
            log.info("SIGTERM: readiness is 503; serving for %.1f s more, then finishing in-flight requests", drain)
        if drain <= 0:
            self.should_exit = True

    async def on_tick(self, counter: int) -> bool:
        if self._stop_at is not None and not self.should_exit and time.monotonic() >= self._stop_at:
            log.info("drain period over: no new connections; finishing in-flight requests")
            self.should_exit = True
        return await super().on_tick(counter)
