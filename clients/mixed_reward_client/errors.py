"""Exceptions, catchable by type (the httpx/starlette way).

    RewardClientError            anything this package raises on purpose
    ├── BadRequest               the server answered 4xx: the request is wrong, retrying cannot help
    └── ServerUnavailable        every attempt on every URL failed (connection errors, timeouts, 5xx, 429)

A failure is always an exception: the client never turns one into a reward of 0. The trainer
adapters can be told to, explicitly (``on_failure="zero"``), and say so in the log.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class RewardClientError(Exception):
    """Base class of every error this package raises."""


class BadRequest(RewardClientError):
    """A 4xx answer. Carries the server's JSON error body so the caller sees which item and field.

    Attributes mirror the service's error shape: ``{"error": {"type", "message", "details"}}``.
    """

    def __init__(self, status_code: int, url: str, body: Any) -> None:
        self.status_code = status_code
        self.url = url
        self.body = body
        error = body.get("error") if isinstance(body, dict) else None
        error = error if isinstance(error, dict) else {}
        self.error_type: str = str(error.get("type", "http_error"))
        self.message: str = str(error.get("message", body if isinstance(body, str) else "request rejected"))
        details = error.get("details")
        self.details: list[dict[str, Any]] = details if isinstance(details, list) else []
        super().__init__(f"{url} answered {status_code} ({self.error_type}): {self.message}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Picklable with its fields: AReaL's process pool and Ray send errors between processes.
        return type(self), (self.status_code, self.url, self.body)


@dataclass(frozen=True)
class Attempt:
    """One failed try, kept for the final error message."""

    url: str
    reason: str


class ServerUnavailable(RewardClientError):
    """Every retry on every configured URL failed, or the call's deadline passed. ``attempts``
    lists what happened, in order; ``rounds`` how many rounds over the URLs were made."""

    def __init__(self, attempts: list[Attempt], elapsed: float, *, rounds: int | None = None, note: str = "") -> None:
        self.attempts = attempts
        self.elapsed = elapsed
        self.rounds = rounds
        self.note = note
        urls = sorted({a.url for a in attempts})
        last = attempts[-1].reason if attempts else "no attempt was made"
        in_rounds = f" in {rounds} round(s)" if rounds is not None else ""
        why = f" ({note})" if note else ""
        super().__init__(
            f"reward service unavailable: {len(attempts)} attempts{in_rounds} over {elapsed:.1f}s on "
            f"{len(urls)} URL(s) {urls} all failed{why}; last error: {last}"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild_unavailable, (self.attempts, self.elapsed, self.rounds, self.note)


def _rebuild_unavailable(attempts: list[Attempt], elapsed: float, rounds: int | None, note: str) -> ServerUnavailable:
    return ServerUnavailable(attempts, elapsed, rounds=rounds, note=note)

