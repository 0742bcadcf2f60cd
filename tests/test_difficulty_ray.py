"""Ray mode: one named actor owns the store; two backends (as two Serve replicas would) share it,
per job, and a request retried through the other backend with its idempotency key counts once."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from reward_server.difficulty.backend import SampleRefused
from reward_server.difficulty.posterior import DecayParams
from reward_server.difficulty.ray_actor import RayBackend, get_or_create_actor
from reward_server.difficulty.store import Observation

ray = pytest.importorskip("ray")
NO_DECAY = DecayParams(local_decay=1.0, stale_half_life=0.0)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_replicas_share_one_actor_and_lose_nothing(local_ray, tmp_path) -> None:
    path = str(tmp_path / "state.db")
    name = "difficulty-test"
    replica_a = RayBackend(get_or_create_actor(name, path, NO_DECAY, "normal"))
    replica_b = RayBackend(get_or_create_actor(name, path, NO_DECAY, "normal"))  # finds the same actor

    async def traffic() -> None:
        calls = [
            (replica_a if i % 2 else replica_b).record("default", [Observation("shared", i % 3 == 0)]) for i in range(60)
        ]
        await asyncio.gather(*calls)

    asyncio.run(traffic())
    state = asyncio.run(replica_a.get("default", "shared"))
    assert (state["n"], state["successes"]) == (60, 20)
    assert asyncio.run(replica_b.get("default", "shared")) == state
    assert asyncio.run(replica_b.get("other-job", "shared")) is None  # another job's state is its own
    assert isinstance(asyncio.run(replica_a.sample("default", ["shared"], None, 2, 0)), SampleRefused)
    asyncio.run(replica_b.register_pool("default", "p", ["shared", "other"]))
    assert sorted(asyncio.run(replica_a.sample("default", None, "p", 2, 1))) == ["other", "shared"]
    assert asyncio.run(replica_a.sample("other-job", None, "p", 1, 1)).reason == "unknown_pool"

    # a request applied through one replica and retried, with its key, through the other: once
    group = [Observation("keyed", True), Observation("keyed", False)]
    assert asyncio.run(replica_a.record("j", group, "request-1")) is True
    assert asyncio.run(replica_b.record("j", group, "request-1")) is False
    assert (asyncio.run(replica_b.get("j", "keyed"))["n"], asyncio.run(replica_b.get("j", "keyed"))["successes"]) == (
        2, 1)
    assert [row["job"] for row in asyncio.run(replica_a.export_rows("j"))] == ["j"]

    # the actor crashes: Ray restarts it and it reloads every committed update from the file
    ray.kill(replica_a.actor, no_restart=False)

    def once_back(call: Any) -> Any:
        """The call, retried while each handle learns of the restart (Ray raises RayActorError, then
        ActorUnavailableError for a task that may or may not have run: keyed calls may be retried)."""
        for _ in range(100):
            try:
                return asyncio.run(call())
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
                time.sleep(0.2)
        raise AssertionError("the actor did not come back")

    restarted = once_back(lambda: replica_b.get("default", "shared"))
    assert (restarted["n"], restarted["successes"]) == (60, 20)
    assert once_back(lambda: replica_a.record("j", group, "request-1")) is False  # the applied keys survived too
    assert once_back(lambda: replica_a.get("j", "keyed"))["n"] == 2
    ray.kill(replica_a.actor, no_restart=True)


def test_an_actor_left_by_an_older_version_is_refused_by_name(local_ray) -> None:
    class ActorOfTheLastVersion:  # defined here, so Ray ships it by value (workers cannot import tests)
        """What a detached state actor started by the previous release answers: no protocol, no jobs."""

        def ping(self) -> dict:
            return {"path": "/old/state.db", "clock": 7, "params": {}}

    old = ray.remote(ActorOfTheLastVersion).options(name="difficulty-old", namespace="mixed-reward",
                                                    lifetime="detached", num_cpus=0).remote()
    try:
        with pytest.raises(RuntimeError, match=r"'difficulty-old' .* older version \(protocol 1, this one speaks 2\);"
                                               r" stop it with ray.kill"):
            get_or_create_actor("difficulty-old", "/unused/state.db", NO_DECAY)
    finally:
        ray.kill(old, no_restart=True)
