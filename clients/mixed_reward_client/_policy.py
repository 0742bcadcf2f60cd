"""Retry, backoff and failover: the one implementation behind the sync and the async client.

The I/O-free part lives here so both twins make exactly the same decisions; they differ only in
how they send a request and how they sleep.

Rules:
- Retried: connection errors, timeouts, any other transport error, 5xx and 429 (the server is
  overloaded or restarting; a ``Retry-After`` header is honoured up to ``max_backoff``).
- Retried too: a 4xx that is not the service's own JSON error body (a Serve proxy's plain-text 404
  once a ``reward-server serve --ray`` application is deleted, a load balancer's or an auth
  proxy's page), and the service's own ``not_found`` (no such route at this URL: another Serve
  application answers under this prefix). They say the *URL* cannot serve the request, not that
  the request is wrong, so the call fails over to the next URL.
- Never retried: any other 4xx from the service itself (its body ``{"error": {"type": ...,
  "message": ...}}``), and any 413, whoever sends it (the body is too large on the way to this
  server: the client splits the batch instead). The request itself is wrong; sending it again
  cannot help.
- Rounds: the retry budget is counted in rounds; each round tries every URL once, in order.
  A failure on one URL moves straight on to the next one without sleeping; only when every URL
  has failed in a round does the client back off (exponential, with jitter). Adding a backup URL
  therefore never shortens the time a call rides out a restart.
- Failover: the URL that last answered stays preferred, so a dead first URL costs one connection
  error, not one per call; ``failback_after`` seconds after the switch the configured order is
  tried again, so a blip on the first URL does not move a whole run to the backup.
- Deadline: one call (all its requests, retries and backoffs) never takes longer than
  ``deadline`` seconds: the per-request timeouts shrink to the time left, and no backoff sleeps
  past it. A slow, overloaded server is not sent the same expensive batch forever.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mixed_reward_client.errors import Attempt, BadRequest, ServerUnavailable

RETRY_STATUSES = frozenset({429})  # plus every 5xx
#: The service's own error types that blame the URL, not the request (``reward_server.errors``).
URL_ERROR_TYPES = frozenset({"not_found"})


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try before raising :class:`ServerUnavailable`.

    ``max_attempts`` is the number of rounds, each trying every URL once: every URL is tried up to
    ``max_attempts`` times per call. The defaults ride out a server restart of ~15 s (backoffs
    0.5, 1, 2, 4, 8 s between rounds) with one URL or several. ``deadline`` bounds one call in
    seconds (None: no bound); ``failback_after`` is how long a backup URL stays preferred before
    the configured order is tried again (None: never).
    """

    max_attempts: int = 6
    backoff: float = 0.5
    max_backoff: float = 8.0
    jitter: float = 0.1
    deadline: float | None = 600.0
    failback_after: float | None = 30.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.backoff < 0 or self.max_backoff < 0:
            raise ValueError("backoff and max_backoff must be >= 0")
        if self.deadline is not None and self.deadline <= 0:
            raise ValueError("deadline must be > 0 seconds (or None for no deadline)")
        if self.failback_after is not None and self.failback_after < 0:
            raise ValueError("failback_after must be >= 0 seconds (or None)")

    def deadline_at(self) -> float | None:
        """The monotonic time by which a call starting now must be done."""
        return None if self.deadline is None else time.monotonic() + self.deadline


def normalise_urls(urls: str | Sequence[str]) -> list[str]:
    """Accept one URL, a comma-separated string, or a list; strip trailing slashes."""
    if isinstance(urls, str):
        urls = urls.split(",")
    cleaned = [u.strip().rstrip("/") for u in urls if u and u.strip()]
    if not cleaned:
        raise ValueError("at least one reward server URL is required")
    for url in cleaned:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"reward server URL must start with http:// or https://, got {url!r}")
    return cleaned


class Endpoints:
    """The URL list plus which one is preferred now. Shared by every call of one client (thread-safe).

    After a failover the URL that answered is preferred for ``failback_after`` seconds; then the
    configured order applies again (if the first URL is still down, that costs one failed
    attempt and the backup is preferred for another ``failback_after`` seconds)."""

    def __init__(self, urls: str | Sequence[str], failback_after: float | None = 30.0) -> None:
        self.urls = normalise_urls(urls)
        self.failback_after = failback_after
        self._preferred = 0
        self._since = 0.0
        self._lock = threading.Lock()

    def order(self) -> list[str]:
        with self._lock:
            if (
                self._preferred
                and self.failback_after is not None
                and time.monotonic() - self._since >= self.failback_after
            ):
                self._preferred = 0
            start = self._preferred
        return self.urls[start:] + self.urls[:start]

    def worked(self, url: str) -> None:
        with self._lock:
            index = self.urls.index(url)
            if index != self._preferred:
                self._preferred = index
                self._since = time.monotonic()


class RetryState:
    """One logical call's progress through attempts. ``next()`` says where to send and how long to
    wait first; ``failed()`` records why an attempt failed; ``give_up()`` builds the final error.

    ``deadline_at`` (monotonic seconds) is shared by every request of one call; by default the
    policy's ``deadline`` from now. ``idempotency_key`` names the one request every attempt
    resends: the same key on every retry and failover, so the server applies its state update once
    however many attempts reach it."""

    def __init__(
        self, endpoints: Endpoints, policy: RetryPolicy, deadline_at: float | None = None,
        idempotency_key: str | None = None,
    ) -> None:
        self.endpoints = endpoints
        self.policy = policy
        self.idempotency_key = idempotency_key
        self.attempts: list[Attempt] = []
        self.started = time.monotonic()
        self.deadline_at = deadline_at if deadline_at is not None else policy.deadline_at()
        self.deadline_hit = False
        self._order = endpoints.order()
        self._position = 0  # attempts made in the current round
        self._rounds = 1  # the round in progress
        self._retry_after = 0.0

    @property
    def rounds(self) -> int:
        return self._rounds

    def remaining(self) -> float | None:
        """Seconds left before the deadline (None: no deadline)."""
        return None if self.deadline_at is None else self.deadline_at - time.monotonic()

    def next(self) -> tuple[str, float] | None:
        """(url, seconds to sleep first), or None when no attempt is left."""
        delay = 0.0
        if self._position >= len(self._order):  # every URL failed this round: back off, next round
            if self._rounds >= self.policy.max_attempts:
                return None
            base = min(self.policy.max_backoff, self.policy.backoff * 2 ** (self._rounds - 1))
            delay = max(base, min(self._retry_after, self.policy.max_backoff))
            delay += random.uniform(0, self.policy.jitter * delay)
            self._rounds += 1
            self._position = 0
            self._retry_after = 0.0
        left = self.remaining()
        if left is not None and left - delay <= 0.001:  # no time left for another request
            self.deadline_hit = True
            return None
        return self._order[self._position], delay

    def failed(self, url: str, reason: str, retry_after: float = 0.0) -> None:
        self.attempts.append(Attempt(url, reason))
        self._position += 1
        self._retry_after = max(self._retry_after, retry_after)
        left = self.remaining()
        if left is not None and left <= 0.001:
            self.deadline_hit = True

    def succeeded(self, url: str) -> None:
        self.endpoints.worked(url)

    def give_up(self) -> ServerUnavailable:
        note = ""
        if self.deadline_hit and self.policy.deadline is not None:
            note = f"the call's deadline of {self.policy.deadline:g}s was reached"
        return ServerUnavailable(self.attempts, time.monotonic() - self.started, rounds=self._rounds, note=note)


def retry_after_seconds(headers: Any) -> float:
    value = headers.get("retry-after") if headers is not None else None
    try:
        return max(0.0, float(value)) if value is not None else 0.0
    except ValueError:
        return 0.0  # an HTTP date: ignore, the exponential backoff applies


class Retryable(Exception):
    """Internal: this answer should be retried elsewhere or later."""

    def __init__(self, reason: str, retry_after: float = 0.0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


def service_error_type(body: Any) -> str | None:
    """The ``type`` of the service's own error body ``{"error": {"type": str, "message": str, ...}}``,
    or None for any other body (a proxy's text, ``{"detail": ...}``, ``{"error": "..."}``)."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("type"), str) and isinstance(error.get("message"), str):
        return error["type"]
    return None


def read_answer(url: str, status: int, headers: Any, content: bytes, expect: str) -> dict[str, Any]:
    """Classify one HTTP answer: the parsed body on 2xx; :class:`BadRequest` on a 4xx the service
    itself gave (not 429, not ``not_found``) and on any 413; :class:`Retryable` on 5xx/429, on a
    4xx from something that is not the service (module docstring), and on a 2xx that is not this
    service's JSON (a proxy page, a wrong port), so a misrouted URL fails over instead of yielding
    garbage rewards or failing the call."""
    body: Any
    try:
        body = json.loads(content) if content else None
    except ValueError:
        body = content[:200].decode("utf-8", "replace")
    if status >= 500 or status in RETRY_STATUSES:
        raise Retryable(f"HTTP {status}: {error_message(body)}", retry_after_seconds(headers))
    if status >= 400:
        kind = service_error_type(body)
        if status != 413 and (kind is None or kind in URL_ERROR_TYPES):
            who = "the service at this URL has no such route" if kind is not None else "not the reward service's answer"
            raise Retryable(f"HTTP {status} ({who}): {error_message(body)}", retry_after_seconds(headers))
        raise BadRequest(status, url, body)
    if not isinstance(body, dict) or (expect and expect not in body):
        raise Retryable(f"HTTP {status} but the body is not a reward-service answer (no {expect!r}): {body!r:.200}")
    return body


def error_message(body: Any) -> str:
    """A short message from any error body: this service's ``{"error": {"message": ...}}``, a
    proxy's ``{"error": "upstream connect error"}`` or ``{"detail": ...}``, plain text, or nothing."""
    if isinstance(body, dict):
        error = body.get("error", body.get("detail", body.get("message", body)))
        if isinstance(error, dict):
            error = error.get("message", error)
        body = error
    text = body if isinstance(body, str) else json.dumps(body, default=repr) if body is not None else "no body"
    return text[:300]


def encode(payload: Any) -> bytes:
    """JSON-encode a request. Numpy scalars and arrays (verl's ``extra_info``) become plain JSON;
    NaN and infinity are refused here rather than sent as invalid JSON."""
    return json.dumps(payload, default=_plain, allow_nan=False, separators=(",", ":")).encode()


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")
