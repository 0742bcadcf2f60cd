"""Settings shared by the trainer adapters: explicit arguments first, then environment variables.

Trainers load reward functions by import path with no place for code, so the URL and token can
come from the environment of the trainer process:

    MIXED_REWARD_URL          one URL or a comma-separated list (failover order)
    MIXED_REWARD_TOKEN        bearer token, if the server has REWARD_API_TOKEN set
    MIXED_REWARD_TIMEOUT      seconds per request (default 120)
    MIXED_REWARD_MAX_ATTEMPTS rounds over all URLs before giving up, i.e. tries per URL (default 6)
    MIXED_REWARD_DEADLINE     seconds one call may take, retries included (default 600)
    MIXED_REWARD_MODEL        the service's table (policy) for open-ended items (default: its default)
    MIXED_REWARD_JOB          the training job (the service's fair share and difficulty state)
    MIXED_REWARD_EXPLAIN      1/true: ask for ``parsed`` (what each rule read) on every result
    MIXED_REWARD_PROFILE      the reward profile (``mixed-r1``, ``robust``; default: the service's)

``model``, ``job`` and ``profile`` belong to a training run, not to a sample: a run sets them once
(an argument or the environment of its trainer processes) and every request of the run carries them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import AsyncIterator, Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from mixed_reward_client._policy import RetryPolicy, normalise_urls

ENV_URL = "MIXED_REWARD_URL"
ENV_TOKEN = "MIXED_REWARD_TOKEN"
ENV_TIMEOUT = "MIXED_REWARD_TIMEOUT"
ENV_MAX_ATTEMPTS = "MIXED_REWARD_MAX_ATTEMPTS"
ENV_DEADLINE = "MIXED_REWARD_DEADLINE"
ENV_MODEL = "MIXED_REWARD_MODEL"
ENV_JOB = "MIXED_REWARD_JOB"
ENV_EXPLAIN = "MIXED_REWARD_EXPLAIN"
ENV_PROFILE = "MIXED_REWARD_PROFILE"
TRUE_WORDS = ("1", "true", "yes", "on")

OnFailure = Literal["raise", "zero", "none"]


@dataclass(frozen=True)
class ClientSettings:
    urls: tuple[str, ...]
    token: str | None
    timeout: float
    max_attempts: int
    backoff: float
    format_weight: float | None
    bmas_reduction: Literal["sum", "mean"] | None
    deadline: float | None = 600.0
    model: str | None = None
    job: str | None = None
    explain: bool = False
    profile: str | None = None

    def client_kwargs(self) -> dict[str, Any]:
        return {
            "token": self.token,
            "timeout": self.timeout,
            "retry": RetryPolicy(max_attempts=self.max_attempts, backoff=self.backoff, deadline=self.deadline),
            "format_weight": self.format_weight,
            "bmas_reduction": self.bmas_reduction,
            "explain": self.explain or None,
            "model": self.model,
            "job": self.job,
            "profile": self.profile,
        }


def resolve(
    urls: str | Sequence[str] | None = None,
    *,
    token: str | None = None,
    timeout: float | None = None,
    max_attempts: int | None = None,
    backoff: float | None = None,
    format_weight: float | None = None,
    bmas_reduction: Literal["sum", "mean"] | None = None,
    deadline: float | None = None,
    model: str | None = None,
    job: str | None = None,
    explain: bool | None = None,
    profile: str | None = None,
) -> ClientSettings:
    raw = urls if urls else os.environ.get(ENV_URL) or os.environ.get("MIXED_REWARD_URLS")
    if not raw:
        raise ValueError(
            f"no reward server URL: pass url=... (e.g. +reward.custom_reward_function.reward_kwargs.url=...) "
            f"or set {ENV_URL}=http://host:8000[,http://backup:8000]"
        )
    return ClientSettings(
        urls=tuple(normalise_urls(raw)),
        token=token or os.environ.get(ENV_TOKEN) or None,
        timeout=float(timeout if timeout is not None else os.environ.get(ENV_TIMEOUT, "120")),
        max_attempts=int(max_attempts if max_attempts is not None else os.environ.get(ENV_MAX_ATTEMPTS, "6")),
        backoff=float(backoff if backoff is not None else 0.5),
        format_weight=None if format_weight is None else float(format_weight),
        bmas_reduction=bmas_reduction,
        deadline=float(deadline if deadline is not None else os.environ.get(ENV_DEADLINE, "600")),
        model=_text(model, ENV_MODEL),
        job=_text(job, ENV_JOB),
        explain=bool(explain) if explain is not None else os.environ.get(ENV_EXPLAIN, "").lower() in TRUE_WORDS,
        profile=_text(profile, ENV_PROFILE),
    )


def _text(value: Any, env: str) -> str | None:
    """An optional name: the argument, else the environment variable; empty means unset."""
    raw = value if value is not None else os.environ.get(env)
    return str(raw) if raw not in (None, "") else None


def check_on_failure(value: str) -> OnFailure:
    if value not in ("raise", "zero", "none"):
        raise ValueError(f"on_failure must be 'raise', 'zero' or 'none', got {value!r}")
    return value  # type: ignore[return-value]


T = TypeVar("T")
# Keyed by the event loop, whose objects (futures, httpx.AsyncClient) reference it back: a plain
# dict, emptied when a loop shuts down (see _closer) and swept of closed loops on every access,
# so clients are neither leaked per asyncio.run nor kept alive by their own loop.
_PER_LOOP: dict[asyncio.AbstractEventLoop, dict[Hashable, Any]] = {}
_CLOSERS: dict[asyncio.AbstractEventLoop, Any] = {}
_LOCK = threading.Lock()


async def per_loop(key: Hashable, factory: Callable[[], T]) -> T:
    """One object per (running event loop, key). asyncio futures and ``httpx.AsyncClient`` belong
    to the loop that made them; verl's reward workers and TRL's daemon loop each get their own.

    When the loop shuts down its async generators (``asyncio.run`` does, on exit), the objects
    made for it are closed (``aclose()``) and forgotten; those of a loop closed without that are
    forgotten on the next call from any loop."""
    loop = asyncio.get_running_loop()
    with _LOCK:
        for stale in [other for other in _PER_LOOP if other.is_closed()]:
            del _PER_LOOP[stale]
            _CLOSERS.pop(stale, None)
        slot = _PER_LOOP.get(loop)
        fresh = slot is None
        if slot is None:
            slot = _PER_LOOP[loop] = {}
        if key not in slot:
            slot[key] = factory()
        value = slot[key]
    if fresh:
        closer = _closer(loop, slot)
        _CLOSERS[loop] = closer  # the loop holds its async generators weakly
        await closer.__anext__()  # registered with the loop, so its shutdown runs the finally below
    return value


async def _closer(loop: asyncio.AbstractEventLoop, slot: dict[Hashable, Any]) -> AsyncIterator[None]:
    try:
        yield
    finally:
        with _LOCK:
            if _PER_LOOP.get(loop) is slot:
                del _PER_LOOP[loop]
            _CLOSERS.pop(loop, None)
        for value in list(slot.values()):
            close = getattr(value, "aclose", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()
