"""Retry, backoff and failover: the one implementation behind the sync and the async client.

The I/O-free part lives here so both twins make exactly the same decisions; they differ only in
how they send a request and how they sleep.

Rules:
- Retried: connection errors, timeouts, any other transport error, 5xx and 429 (the server is
  overloaded or restarting; a ``Retry-After`` header is honoured up to ``max_backoff``).
- Never retried: any other 4xx. The request itself is wrong; sending it again cannot help.
- Failover: a failure on one URL moves straight on to the next one without sleeping; only when
  every URL has failed in a round does the client back off (exponential, with jitter). The URL
  that last answered stays preferred, so a dead first URL costs one connection error, not one
  per call.
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


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try before raising :class:`ServerUnavailable`.

    ``max_attempts`` counts requests across all URLs (a failover is an attempt). The defaults
    ride out a server restart of ~15 s: backoffs 0.5, 1, 2, 4, 8 s between rounds.
    """

    max_attempts: int = 6
    backoff: float = 0.5
    max_backoff: float = 8.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.backoff < 0 or self.max_backoff < 0:
            raise ValueError("backoff and max_backoff must be >= 0")


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
    """The URL list plus which one is preferred now. Shared by every call of one client (thread-safe)."""

    def __init__(self, urls: str | Sequence[str]) -> None:
        self.urls = normalise_urls(urls)
        self._preferred = 0
        self._lock = threading.Lock()

    def order(self) -> list[str]:
        with self._lock:
            start = self._preferred
        return self.urls[start:] + self.urls[:start]

    def worked(self, url: str) -> None:
        with self._lock:
            self._preferred = self.urls.index(url)


class RetryState:
    """One logical call's progress through attempts. ``next()`` says where to send and how long to
    wait first; ``failed()`` records why an attempt failed; ``give_up()`` builds the final error."""

    def __init__(self, endpoints: Endpoints, policy: RetryPolicy) -> None:
        self.endpoints = endpoints
        self.policy = policy
        self.attempts: list[Attempt] = []
        self.started = time.monotonic()
        self._order = endpoints.order()
        self._position = 0
        self._round_failures = 0
        self._rounds = 0
        self._retry_after = 0.0

    def next(self) -> tuple[str, float] | None:
        """(url, seconds to sleep first), or None when no attempt is left."""
        if len(self.attempts) >= self.policy.max_attempts:
            return None
        delay = 0.0
        if self._round_failures >= len(self._order):  # every URL failed this round: back off
            self._rounds += 1
            self._round_failures = 0
            base = min(self.policy.max_backoff, self.policy.backoff * 2 ** (self._rounds - 1))
            delay = max(base, min(self._retry_after, self.policy.max_backoff))
            delay += random.uniform(0, self.policy.jitter * delay)
            self._retry_after = 0.0
        url = self._order[self._position % len(self._order)]
        return url, delay

    def failed(self, url: str, reason: str, retry_after: float = 0.0) -> None:
        self.attempts.append(Attempt(url, reason))
        self._position += 1
        self._round_failures += 1
        self._retry_after = max(self._retry_after, retry_after)

    def succeeded(self, url: str) -> None:
        self.endpoints.worked(url)

    def give_up(self) -> ServerUnavailable:
        return ServerUnavailable(self.attempts, time.monotonic() - self.started)


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


def read_answer(url: str, status: int, headers: Any, content: bytes, expect: str) -> dict[str, Any]:
    """Classify one HTTP answer: the parsed body on 2xx, :class:`BadRequest` on 4xx (not 429),
    :class:`Retryable` on 5xx/429 or a 2xx that is not this service's JSON (a proxy page, a
    wrong port), so a misrouted URL fails over instead of yielding garbage rewards."""
    body: Any
    try:
        body = json.loads(content) if content else None
    except ValueError:
        body = content[:200].decode("utf-8", "replace")
    if status >= 500 or status in RETRY_STATUSES:
        message = body.get("error", {}).get("message") if isinstance(body, dict) else body
        raise Retryable(f"HTTP {status}: {message}", retry_after_seconds(headers))
    if status >= 400:
        raise BadRequest(status, url, body)
    if not isinstance(body, dict) or (expect and expect not in body):
        raise Retryable(f"HTTP {status} but the body is not a reward-service answer (no {expect!r}): {body!r:.200}")
    return body


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
