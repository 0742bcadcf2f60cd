"""The batcher: one request whose scoring fails must not fail the requests coalesced with it."""

from __future__ import annotations

import asyncio

import pytest

from reward_server.engine.batcher import Batcher, BatcherStopped
from reward_server.engine.scorer import DeviceError, RewardEngine
from reward_server.rewards.rules import prepare_ground_truth
from reward_server.rewards.scoring import PreparedItem


class EngineWithABug(RewardEngine):
    """A real engine that raises on one marked response, standing in for an unforeseen bug."""

    def begin(self, items):  # type: ignore[no-untyped-def]
        if any(item.response == "trigger the bug" for item in items):
            raise ArithmeticError("a bug in the engine")
        return super().begin(items)


def test_a_failing_request_does_not_fail_its_batch(default_table) -> None:
    truth = prepare_ground_truth("yes_no", "yes")

    async def main() -> list[object]:
        batcher = Batcher(EngineWithABug(default_table), max_wait_s=0.05)
        await batcher.start()
        try:
            jobs = [batcher.submit([PreparedItem(text, truth)]) for text in ("yes", "trigger the bug", "no")]
            return await asyncio.gather(*jobs, return_exceptions=True)
        finally:
            await batcher.stop()

    good, bad, other = asyncio.run(main())
    assert isinstance(bad, ArithmeticError)
    assert good.results[0].accuracy == 1.0 and other.results[0].accuracy == 0.0
    assert good.batch_items == 1  # rescored alone after the coalesced batch failed


def test_a_stopped_batcher_refuses_at_once(default_table) -> None:
    async def main() -> None:
        batcher = Batcher(RewardEngine(default_table))
        await batcher.start()
        await batcher.stop()
        with pytest.raises(BatcherStopped):
            await batcher.submit([PreparedItem("yes", prepare_ground_truth("yes_no", "yes"))])

    asyncio.run(main())


class EngineOnABrokenDevice(RewardEngine):
    """A real engine whose device stage fails the way a sticky CUDA error does (fault injection:
    there is no GPU here to break)."""

    def finish(self, scoring):  # type: ignore[no-untyped-def]
        raise DeviceError("CUDA error: an illegal memory access was encountered")


def test_a_device_error_stops_scoring_and_says_so(default_table) -> None:
    truth = prepare_ground_truth("open_ended", "a small dog")

    async def main() -> tuple[object, object, object]:
        batcher = Batcher(EngineOnABrokenDevice(default_table), max_wait_s=0.01)
        await batcher.start()
        try:
            first = await asyncio.gather(batcher.submit([PreparedItem("a dog", truth)]), return_exceptions=True)
            later = await asyncio.gather(batcher.submit([PreparedItem("a cat", truth)]), return_exceptions=True)
            return first[0], later[0], batcher.device_error
        finally:
            await batcher.stop()

    first, later, error = asyncio.run(main())
    assert isinstance(first, BatcherStopped) and "the scoring device failed: CUDA error" in str(first)
    assert isinstance(later, BatcherStopped) and (first.status, first.type) == (503, "not_ready")
    assert isinstance(error, DeviceError)


def test_after_a_device_error_the_service_says_it_is_not_ready(default_table) -> None:
    """Through HTTP: the request that met the error is a 503 not_ready (a trainer's client retries
    it on another replica), and /readyz and the reward_ready gauge turn to not ready, so a load
    balancer or Kubernetes takes the broken replica out instead of sending it more work."""
    import httpx
    from serving import running_server

    def broken_device(scoring):  # type: ignore[no-untyped-def]
        raise DeviceError("CUDA error: an illegal memory access was encountered")

    item = {"response": "<answer>a dog</answer>", "ground_truth": "a small dog", "task_type": "open_ended"}
    with running_server(default_table) as server:
        assert httpx.get(server.url + "/readyz").status_code == 200
        server.app.state.service.batcher.engine.finish = broken_device  # the device fails from now on
        failed = httpx.post(server.url + "/score", json={"items": [item]}, timeout=60)
        assert failed.status_code == 503 and failed.json()["error"]["type"] == "not_ready"
        assert "the scoring device failed: CUDA error" in failed.json()["error"]["message"]
        ready = httpx.get(server.url + "/readyz")
        metrics = httpx.get(server.url + "/metrics").text
    assert ready.status_code == 503 and ready.json()["error"]["type"] == "not_ready"
    assert "reward_ready 0.0" in metrics
