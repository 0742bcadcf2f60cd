"""The store interface the service talks to, asynchronously: one embedded SQLite store per
process (:class:`LocalBackend`) or one Ray actor shared by every replica (``ray_actor.RayBackend``).

Both answer the same calls with the same values; sampling errors come back as values
(:class:`SampleRefused`), not exceptions, so they cross a Ray actor boundary unchanged. Every call
names the training job whose state it reads or writes (SPEC §15: state is kept per job).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from reward_server.difficulty.store import DifficultyStore, Observation
from reward_server.errors import KTooLarge, UnknownPool


@dataclass(frozen=True)
class SampleRefused:
    """Why a sample request cannot be answered: ``reason`` is the error type (``UnknownPool.type`` or ``KTooLarge.type``)."""

    reason: str
    message: str


def sample_or_refuse(
    store: DifficultyStore, job: str, candidates: Sequence[str] | None, pool: str | None, k: int, seed: int | None
) -> list[str] | SampleRefused:
    """The one place that decides a sample request, shared by both backends."""
    if pool is not None:
        ids = store.pool(pool, job)
        if ids is None:
            return SampleRefused(
                UnknownPool.type, f"pool {pool!r} is not registered for job {job!r} (PUT /v1/pools/{{name}} first)"
            )
    else:
        ids = list(candidates or [])
    distinct = len(dict.fromkeys(ids))
    if k > distinct:
        where = f"pool {pool!r}" if pool is not None else "candidates"
        return SampleRefused(KTooLarge.type, f"k={k} is larger than the {distinct} distinct prompt ids of the {where}")
    return store.sample(ids, k, seed, job)


class DifficultyBackend(Protocol):
    async def record(self, job: str, observations: Sequence[Observation], key: str | None = None) -> bool:
        """Durably apply one request's observations as one unit; False when ``key`` was applied
        before (a retried request: nothing counted again)."""
        ...

    async def get(self, job: str, prompt_id: str) -> dict[str, Any] | None: ...
    async def sample(
        self, job: str, candidates: Sequence[str] | None, pool: str | None, k: int, seed: int | None
    ) -> list[str] | SampleRefused: ...
    async def register_pool(self, job: str, name: str, prompt_ids: Sequence[str]) -> None: ...
    async def export_rows(self, job: str) -> list[dict[str, Any]]: ...
    async def summary(self) -> dict[str, Any]: ...
    async def close(self) -> None: ...


class LocalBackend:
    """The embedded default: this process owns the SQLite file."""

    def __init__(self, store: DifficultyStore) -> None:
        self.store = store

    async def record(self, job: str, observations: Sequence[Observation], key: str | None = None) -> bool:
        return await asyncio.wrap_future(self.store.submit(observations, job, key))

    async def get(self, job: str, prompt_id: str) -> dict[str, Any] | None:
        return self.store.get(prompt_id, job)

    async def sample(
        self, job: str, candidates: Sequence[str] | None, pool: str | None, k: int, seed: int | None
    ) -> list[str] | SampleRefused:
        # A large pool takes milliseconds of numpy: off the event loop, so scoring is not held up.
        return await asyncio.to_thread(sample_or_refuse, self.store, job, candidates, pool, k, seed)

    async def register_pool(self, job: str, name: str, prompt_ids: Sequence[str]) -> None:
        await asyncio.wrap_future(self.store.register_pool(name, prompt_ids, job))

    async def export_rows(self, job: str) -> list[dict[str, Any]]:
        return await asyncio.to_thread(lambda: list(self.store.export_rows(job)))

    async def summary(self) -> dict[str, Any]:
        return await asyncio.to_thread(self.store.summary)

    async def close(self) -> None:
        await asyncio.to_thread(self.store.close)
