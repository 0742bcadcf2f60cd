"""Ray mode: one named actor owns the SQLite store; every Serve replica talks to it.

Replicas are separate processes (often on separate nodes), so each embedding its own SQLite file
would split a prompt's history across replicas. Instead one actor, found by name, holds the one
:class:`DifficultyStore`; replicas call it through :class:`RayBackend`, which has the same async
interface as the embedded backend. The actor is *threaded* (``max_concurrency``): concurrent
``record`` calls from many replicas wait in their own threads while the store's single writer
commits them together, so group commit works across replicas as it does across requests.

The actor is detached (it outlives the replica that created it) and restartable: on a crash Ray
starts it again and it reloads every committed update from the file. The file lives on the node
that runs the actor; pin it there (``actor_options={"resources": {...}}``) when the cluster has
several nodes, so a restart finds the same file.

``ray`` is imported only when this module is used: the service does not depend on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from reward_server.difficulty.backend import SampleRefused, sample_or_refuse
from reward_server.difficulty.posterior import DecayParams
from reward_server.difficulty.store import DifficultyStore, Observation, Synchronous

DEFAULT_NAMESPACE = "mixed-reward"


class DifficultyActorImpl:
    """The actor's body (plain class, so it can be tested without Ray too)."""

    def __init__(self, path: str, params: dict[str, float], synchronous: Synchronous) -> None:
        self.store = DifficultyStore(path, DecayParams(**params), synchronous)

    def ping(self) -> dict[str, Any]:
        return {"path": str(self.store.path), "clock": self.store.clock, "params": asdict(self.store.params)}

    def record(self, observations: list[tuple[str, bool]]) -> None:
        """Returns once the updates are durable (the caller's ``await`` is the acknowledgement)."""
        self.store.record([Observation(pid, bool(ok)) for pid, ok in observations])

    def get(self, prompt_id: str) -> dict[str, Any] | None:
        return self.store.get(prompt_id)

    def sample(
        self, candidates: list[str] | None, pool: str | None, k: int, seed: int | None
    ) -> list[str] | tuple[str, str]:
        result = sample_or_refuse(self.store, candidates, pool, k, seed)
        return (result.reason, result.message) if isinstance(result, SampleRefused) else result

    def register_pool(self, name: str, prompt_ids: list[str]) -> None:
        self.store.register_pool(name, prompt_ids).result()

    def export_rows(self) -> list[dict[str, Any]]:
        return list(self.store.export_rows())

    def summary(self) -> dict[str, Any]:
        return self.store.summary()

    def close(self) -> None:
        self.store.close()


def get_or_create_actor(
    name: str,
    path: str,
    params: DecayParams,
    synchronous: Synchronous = "full",
    *,
    namespace: str = DEFAULT_NAMESPACE,
    max_concurrency: int = 256,
    actor_options: dict[str, Any] | None = None,
) -> Any:
    """The named state actor, created on first use (by whichever replica gets there first)."""
    import ray

    actor_cls = ray.remote(DifficultyActorImpl)
    options: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "get_if_exists": True,  # concurrent replicas: all end up with the one actor
        "lifetime": "detached",
        "max_restarts": -1,
        "max_concurrency": max_concurrency,
        "num_cpus": 0,
    }
    options.update(actor_options or {})
    return actor_cls.options(**options).remote(path, asdict(params), synchronous)


class RayBackend:
    """:class:`~reward_server.difficulty.backend.DifficultyBackend` over the named actor."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor

    async def record(self, observations: Sequence[Observation]) -> None:
        await self.actor.record.remote([(o.prompt_id, o.correct) for o in observations])

    async def get(self, prompt_id: str) -> dict[str, Any] | None:
        return await self.actor.get.remote(prompt_id)

    async def sample(
        self, candidates: Sequence[str] | None, pool: str | None, k: int, seed: int | None
    ) -> list[str] | SampleRefused:
        result = await self.actor.sample.remote(None if candidates is None else list(candidates), pool, k, seed)
        return SampleRefused(*result) if isinstance(result, tuple) else result

    async def register_pool(self, name: str, prompt_ids: Sequence[str]) -> None:
        await self.actor.register_pool.remote(name, list(prompt_ids))

    async def export_rows(self) -> list[dict[str, Any]]:
        return await self.actor.export_rows.remote()

    async def summary(self) -> dict[str, Any]:
        return await self.actor.summary.remote()

    async def close(self) -> None:
        """A replica going away leaves the shared actor running for the others."""
