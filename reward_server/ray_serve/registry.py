"""The replica registry: one small named actor per application that every replica reports to.

Serve knows its replicas but not what they hold. The registry answers four questions:

* which table each live replica serves (``/v1/info``'s ``replicas``: how many serve which hash);
* where each replica's own ``/metrics`` listens (``/v1/metrics/targets``, Prometheus HTTP service
  discovery: the Serve proxy would hand a scrape to one replica at random);
* which table the cluster should serve: ``/admin/reload`` on any replica publishes it here with a
  new generation; every replica swaps it in (polling every second), and a replica that starts later
  (a replacement, an autoscaled one) loads the published table instead of its start-up one;
* whether the application is draining: ``reward-server serve --ray`` on SIGTERM calls
  :meth:`begin_drain`, and every replica, which keeps one :meth:`wait_drain` call pending, learns it
  in one actor round trip (milliseconds), not at its next report: readiness turns 503 on every
  replica at once, as in one process (``service/shutdown.py``).

Replicas report every second; one not heard from for ``ttl_s`` seconds (SIGKILLed, its node gone)
drops out of the answers. The actor is detached and restartable: after a crash the replicas report
again within a second, but the published table is lost (later replicas start on their configured
table), so a reload that must survive a registry crash belongs in the deployment's config.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

NAMESPACE = "mixed-reward"
REPORT_EVERY_S = 1.0
TTL_S = 5.0


class ReplicaRegistryImpl:
    """The actor's body (a plain class: tested without Ray).

    :meth:`wait_drain` makes it an asyncio actor: every method runs on the actor's one event loop,
    one at a time between awaits, so the state still needs no lock (the other methods never await)."""

    def __init__(self, ttl_s: float = TTL_S) -> None:
        self.ttl_s = ttl_s
        self._replicas: dict[str, tuple[dict[str, Any], float]] = {}
        self._generation = 0
        self._table: dict[str, Any] | None = None
        self._draining_since: float | None = None  # wall-clock time of the first begin_drain
        self._drain: asyncio.Event | None = None  # made on the actor's loop, by the first waiter

    def report(self, replica_id: str, info: dict[str, Any]) -> tuple[int, dict[str, Any] | None]:
        """Record one replica's state; answers the published table (generation, spec)."""
        self._replicas[replica_id] = (dict(info, replica_id=replica_id), time.monotonic())
        return self._generation, self._table

    def forget(self, replica_id: str) -> None:
        self._replicas.pop(replica_id, None)

    def live(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        for key in [k for k, (_, seen) in self._replicas.items() if now - seen > self.ttl_s]:
            del self._replicas[key]
        return sorted((info for info, _ in self._replicas.values()), key=lambda r: r["replica_id"])

    def published(self) -> tuple[int, dict[str, Any] | None]:
        return self._generation, self._table

    def publish(self, table: dict[str, Any]) -> int:
        """A new table for every replica (``model_path``, ``device``, ``dtype``); its generation."""
        self._generation += 1
        self._table = dict(table)
        return self._generation

    async def begin_drain(self) -> float:
        """The application is shutting down: wake every :meth:`wait_drain`. Idempotent; answers
        when the drain began (wall-clock seconds). A coroutine so that it runs on the loop that
        owns the event (an asyncio.Event is not thread-safe)."""
        if self._draining_since is None:
            self._draining_since = time.time()
        if self._drain is not None:
            self._drain.set()
        return self._draining_since

    async def wait_drain(self) -> float:
        """Return once the application drains (at once if it already does), with when it began.
        Each replica keeps one of these calls pending for its whole life."""
        if self._draining_since is None:
            if self._drain is None:
                self._drain = asyncio.Event()
            await self._drain.wait()
        assert self._draining_since is not None
        return self._draining_since


def summary(replicas: list[dict[str, Any]], generation: int) -> dict[str, Any]:
    """``/v1/info``'s ``replicas``: how many replicas serve which default-table hash, how many drain,
    and each one (with the named tables it holds: ``resident_tables``)."""
    tables: dict[str, int] = {}
    for replica in replicas:
        tables[replica["content_hash"]] = tables.get(replica["content_hash"], 0) + 1
    draining = sum(1 for replica in replicas if replica.get("draining"))
    return {"count": len(replicas), "tables": tables, "generation": generation, "draining": draining,
            "replicas": replicas}


def registry_name(app_name: str) -> str:
    return f"{app_name}-replicas"


def get_or_create_registry(app_name: str) -> Any:
    """The application's registry actor, created by whichever replica gets there first."""
    import ray

    return ray.remote(ReplicaRegistryImpl).options(
        name=registry_name(app_name), namespace=NAMESPACE, get_if_exists=True, lifetime="detached",
        max_restarts=-1, num_cpus=0,  # an asyncio actor: one loop, the calls are tiny, the state needs no lock
    ).remote()
