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

Its methods take the job and the request's idempotency key as the embedded store does; a retried
request that reaches the actor through another replica is skipped by the store's key check, which
is the reason that check lives in the store and not in a replica. An actor left running by an older
version (detached actors outlive a redeploy) is refused by name rather than called with arguments
it does not take: see :func:`check_actor`.

``ray`` is imported only when this module is used: the service does not depend on it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from reward_server.difficulty.backend import SampleRefused, sample_or_refuse
from reward_server.difficulty.posterior import DecayParams
from reward_server.difficulty.store import SCHEMA_VERSION, DifficultyStore, Observation, Synchronous

DEFAULT_NAMESPACE = "mixed-reward"
ACTOR_PROTOCOL = 2  # the calls' signatures: 1 had no job and no key; bump when a method's arguments change


class DifficultyActorImpl:
    """The actor's body (plain class, so it can be tested without Ray too)."""

    def __init__(self, path: str, params: dict[str, float], synchronous: Synchronous) -> None:
        self.store = DifficultyStore(path, DecayParams(**params), synchronous)

    def ping(self) -> dict[str, Any]:
        return {"path": str(self.store.path), "pid": os.getpid(), "params": asdict(self.store.params),
                "protocol": ACTOR_PROTOCOL, "schema_version": SCHEMA_VERSION}

    def record(self, job: str, observations: list[tuple[str, bool]], key: str | None = None) -> bool:
        """Returns once the updates are durable (the caller's ``await`` is the acknowledgement);
        False when ``key`` had been applied before (a retry through any replica counts once)."""
        return self.store.record([Observation(pid, bool(ok)) for pid, ok in observations], job, key)

    def get(self, job: str, prompt_id: str) -> dict[str, Any] | None:
        return self.store.get(prompt_id, job)

    def sample(
        self, job: str, candidates: list[str] | None, pool: str | None, k: int, seed: int | None
    ) -> list[str] | tuple[str, str]:
        result = sample_or_refuse(self.store, job, candidates, pool, k, seed)
        return (result.reason, result.message) if isinstance(result, SampleRefused) else result

    def register_pool(self, job: str, name: str, prompt_ids: list[str]) -> None:
        self.store.register_pool(name, prompt_ids, job).result()

    def export_rows(self, job: str) -> list[dict[str, Any]]:
        return list(self.store.export_rows(job))

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
    actor = actor_cls.options(**options).remote(path, asdict(params), synchronous)
    check_actor(actor, name, namespace)
    return actor


def check_actor(actor: Any, name: str, namespace: str = DEFAULT_NAMESPACE, timeout_s: float = 120.0) -> None:
    """Refuse an actor that speaks an older protocol. The actor is detached, so one created by the
    previous version of the service survives a redeploy, and ``get_if_exists`` hands it back with
    its old code: calling it with a job and a key would fail on every request. Better to stop the
    start with what to do (the new actor migrates the file when it opens it)."""
    import ray

    found = ray.get(actor.ping.remote(), timeout=timeout_s).get("protocol", 1)
    if found != ACTOR_PROTOCOL:
        raise RuntimeError(
            f"the difficulty state actor {name!r} (namespace {namespace!r}) was started by an older version "
            f"(protocol {found}, this one speaks {ACTOR_PROTOCOL}); stop it with "
            f"ray.kill(ray.get_actor({name!r}, namespace={namespace!r}), no_restart=True) and start again"
        )


class RayBackend:
    """:class:`~reward_server.difficulty.backend.DifficultyBackend` over the named actor.

    After the actor restarts (it reloads the file), each handle's first call may fail with
    ``ActorUnavailableError`` ("may or may not have been executed"). Calls that may safely run
    twice (reads, a replaced pool, an update under an idempotency key) are retried for a few
    seconds; an update without a key is not, and its request answers 503 for the client to retry.
    """

    RETRIES = 25
    RETRY_SLEEP_S = 0.2

    def __init__(self, actor: Any) -> None:
        self.actor = actor

    async def _call(self, method: str, *args: Any, idempotent: bool = True) -> Any:
        import asyncio

        import ray

        for attempt in range(self.RETRIES):
            try:
                return await getattr(self.actor, method).remote(*args)
            except ray.exceptions.ActorUnavailableError:
                if not idempotent or attempt == self.RETRIES - 1:
                    raise
                await asyncio.sleep(self.RETRY_SLEEP_S)
        raise AssertionError("unreachable")

    async def record(self, job: str, observations: Sequence[Observation], key: str | None = None) -> bool:
        return await self._call("record", job, [(o.prompt_id, o.correct) for o in observations], key,
                                idempotent=key is not None)

    async def get(self, job: str, prompt_id: str) -> dict[str, Any] | None:
        return await self._call("get", job, prompt_id)

    async def sample(
        self, job: str, candidates: Sequence[str] | None, pool: str | None, k: int, seed: int | None
    ) -> list[str] | SampleRefused:
        result = await self._call("sample", job, None if candidates is None else list(candidates), pool, k, seed)
        return SampleRefused(*result) if isinstance(result, tuple) else result

    async def register_pool(self, job: str, name: str, prompt_ids: Sequence[str]) -> None:
        await self._call("register_pool", job, name, list(prompt_ids))

    async def export_rows(self, job: str) -> list[dict[str, Any]]:
        return await self._call("export_rows", job)

    async def summary(self) -> dict[str, Any]:
        return await self._call("summary")

    async def close(self) -> None:
        """A replica going away leaves the shared actor running for the others."""
