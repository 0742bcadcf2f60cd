"""Coalescing concurrent single-sample calls into batched ``POST /score`` requests.

verl's reward loop, NeMo Gym's ``/verify`` handlers, AReaL's rollout workflows and verifiers'
scoring all ask for one sample's reward at a time, hundreds at once on one event loop. Each call
queues here; the queue goes out as one request when ``max_batch`` samples are waiting or
``flush_ms`` milliseconds after the first arrived, whichever comes first. The server's batching
then sees whole batches, and a reward never depends on which batch a sample joined.
"""

from __future__ import annotations

import asyncio
from typing import Any

from mixed_reward_client._config import ClientSettings, per_loop
from mixed_reward_client.client import AsyncRewardClient, encode_item

DEFAULT_FLUSH_MS = 5.0
DEFAULT_MAX_BATCH = 1024


class Coalescer:
    """Gathers concurrent single-sample calls on one event loop into batched requests."""

    def __init__(self, client: AsyncRewardClient, flush_s: float, max_batch: int) -> None:
        self.client = client
        self.flush_s = flush_s
        self.max_batch = max(1, max_batch)
        self._pending: list[tuple[dict[str, Any], bytes, asyncio.Future[dict[str, Any]]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self.requests = 0  # batched requests sent, for tests and logs

    async def score(self, item: dict[str, Any], label: str = "sample") -> dict[str, Any]:
        """Queue one item; raises :class:`RewardClientError` naming ``label`` at once when the item
        cannot be encoded, so it never reaches (or fails) a batch."""
        wire, encoded = encode_item(item, label)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._pending.append((wire, encoded, future))
        if len(self._pending) >= self.max_batch:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.flush_s, self._flush)
        return await future

    async def aclose(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await self.client.aclose()

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending, []
        if batch:
            self.requests += 1
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._inflight.add(task)  # keep a reference: the loop only holds weak ones
            task.add_done_callback(self._inflight.discard)

    async def _send(self, batch: list[tuple[dict[str, Any], bytes, asyncio.Future[dict[str, Any]]]]) -> None:
        try:
            prepared = self.client._prepared([w for w, _, _ in batch], [b for _, b, _ in batch])
            answer = await self.client._score_prepared(prepared)
        except asyncio.CancelledError:
            for _, _, future in batch:
                future.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - handed to every waiting sample, which re-raises it
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, _, future), row in zip(batch, answer.results):
            if not future.done():
                future.set_result(row)



async def coalescer_for(
    adapter: str, settings: ClientSettings, flush_ms: float = DEFAULT_FLUSH_MS, max_batch: int = DEFAULT_MAX_BATCH
) -> Coalescer:
    """The running loop's shared coalescer for one adapter and configuration."""
    return await per_loop(
        (adapter, settings, float(flush_ms), int(max_batch)),
        lambda: Coalescer(
            AsyncRewardClient(list(settings.urls), **settings.client_kwargs()), flush_ms / 1000.0, max_batch
        ),
    )
