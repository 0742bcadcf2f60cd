"""Ray mode: one named actor owns the store; two backends (as two Serve replicas would) share it."""

from __future__ import annotations

import asyncio
import time

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
            (replica_a if i % 2 else replica_b).record([Observation("shared", i % 3 == 0)]) for i in range(60)
        ]
        await asyncio.gather(*calls)

    asyncio.run(traffic())
    state = asyncio.run(replica_a.get("shared"))
    assert (state["n"], state["successes"]) == (60, 20)
    assert asyncio.run(replica_b.get("shared")) == state
    assert isinstance(asyncio.run(replica_a.sample(["shared"], None, 2, 0)), SampleRefused)
    asyncio.run(replica_b.register_pool("p", ["shared", "other"]))
    assert sorted(asyncio.run(replica_a.sample(None, "p", 2, 1))) == ["other", "shared"]

    # the actor crashes: Ray restarts it and it reloads every committed update from the file
    ray.kill(replica_a.actor, no_restart=False)
    for _ in range(100):
        try:
            restarted = asyncio.run(replica_b.get("shared"))
            break
        except ray.exceptions.RayActorError:
            time.sleep(0.2)
    assert (restarted["n"], restarted["successes"]) == (60, 20)
    ray.kill(replica_a.actor, no_restart=True)
