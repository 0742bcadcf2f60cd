"""The replica registry: one small named actor per application that every replica reports to.

Serve knows its replicas but not what they hold. The registry answers three questions:

* which table each live replica serves (``/v1/info``'s ``replicas``: how many serve which hash);
* where each replica's own ``/metrics`` listens (``/v1/metrics/targets``, Prometheus HTTP service
  discovery: the Serve proxy would hand a scrape to one replica at random);
* which table the cluster should serve: ``/admin/reload`` on any replica publishes it here with a
  new generation; every replica swaps it in (polling every second), and a replica that starts later
  (a replacement, an autoscaled one) loads the published table instead of its start-up one.

Replicas report every second; one not heard from for ``ttl_s`` seconds (SIGKILLed, its node gone)
drops out of the answers. The actor is detached and restartable: after a crash the replicas report
again within a second, but the published table is lost (later replicas start on their configured
table), so a reload that must survive a registry crash belongs in the deployment's config.
"""

from __future__ import annotations

import time
from typing import Any

NAMESPACE = "mixed-reward"
REPORT_EVERY_S = 1.0
TTL_S = 5.0


class ReplicaRegistryImpl:
    """The actor's body (a plain class: tested without Ray)."""

    def __init__(self, ttl_s: float = TTL_S) -> None:
        self.ttl_s = ttl_s
        self._replicas: dict[str, tuple[dict[str, Any], float]] = {}
        self._generation = 0
        self._table: dict[str, Any] | None = None

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


def summary(replicas: list[dict[str, Any]], generation: int) -> dict[str, Any]:
    """``/v1/info``'s ``replicas``: how many replicas serve which table hash, and each one."""
    tables: dict[str, int] = {}
    for replica in replicas:
        tables[replica["content_hash"]] = tables.get(replica["content_hash"], 0) + 1
    return {"count": len(replicas), "tables": tables, "generation": generation, "replicas": replicas}


def registry_name(app_name: str) -> str:
    return f"{app_name}-replicas"


def get_or_create_registry(app_name: str) -> Any:
    """The application's registry actor, created by whichever replica gets there first."""
    import ray

    return ray.remote(ReplicaRegistryImpl).options(
        name=registry_name(app_name), namespace=NAMESPACE, get_if_exists=True, lifetime="detached",
        max_restarts=-1, num_cpus=0,  # one call at a time: the calls are tiny, the state needs no lock
    ).remote()
