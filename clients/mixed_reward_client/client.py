"""``RewardClient`` and ``AsyncRewardClient``: POST /score (and /get_reward) with timeouts,
retries, failover across URLs and splitting of large batches.

The two classes share every decision (``_policy``, ``_batching``); they differ only in how they
send and sleep. Both raise instead of guessing: :class:`BadRequest` for a 4xx, and
:class:`ServerUnavailable` once every retry on every URL has failed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import httpx

from mixed_reward_client._batching import ScoreBatch, item_payload, merge, plan_chunks
from mixed_reward_client._policy import Endpoints, Retryable, RetryPolicy, RetryState, encode, read_answer
from mixed_reward_client.errors import RewardClientError

if TYPE_CHECKING:
    from typing_extensions import Self

DEFAULT_TIMEOUT = 120.0  # a few thousand open-ended items on a CPU server take tens of seconds
DEFAULT_MAX_BATCH_ITEMS = 2048  # well under the server's default limit of 8192 items per request


def _describe(exc: BaseException) -> str:
    text = str(exc) or "no detail"
    return f"{type(exc).__name__}: {text}"


class _ClientBase:
    """Configuration shared by the sync and the async client."""

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float = 5.0,
        retry: RetryPolicy | None = None,
        max_batch_items: int = DEFAULT_MAX_BATCH_ITEMS,
        format_weight: float | None = None,
        bmas_reduction: Literal["sum", "mean"] | None = None,
    ) -> None:
        self._endpoints = Endpoints(urls)
        self.retry = retry or RetryPolicy()
        self.max_batch_items = max_batch_items
        self.options: dict[str, Any] = {}
        if format_weight is not None:
            self.options["format_weight"] = float(format_weight)
        if bmas_reduction is not None:
            self.options["bmas_reduction"] = bmas_reduction
        self._timeout = httpx.Timeout(timeout, connect=min(connect_timeout, timeout))
        self._headers = {"content-type": "application/json", "accept": "application/json"}
        if token:
            self._headers["authorization"] = f"Bearer {token}"

    @property
    def urls(self) -> list[str]:
        return list(self._endpoints.urls)

    def _plan(
        self, items: Sequence[Mapping[str, Any]], format_weight: float | None, bmas_reduction: str | None
    ) -> tuple[list[list[int]], list[bytes]]:
        options = dict(self.options)
        if format_weight is not None:
            options["format_weight"] = float(format_weight)
        if bmas_reduction is not None:
            options["bmas_reduction"] = bmas_reduction
        wire = [item_payload(item) for item in items]
        chunks = plan_chunks(wire, self.max_batch_items)
        try:
            bodies = [
                encode({"items": [wire[i] for i in chunk], **({"options": options} if options else {})})
                for chunk in chunks
            ]
        except (TypeError, ValueError) as exc:
            raise RewardClientError(f"items cannot be sent as JSON: {exc}") from exc
        return chunks, bodies

    @staticmethod
    def _merge(count: int, chunks: list[list[int]], answers: list[dict[str, Any]]) -> ScoreBatch:
        try:
            return merge(count, chunks, answers)
        except ValueError as exc:
            raise RewardClientError(str(exc)) from exc

    @staticmethod
    def _get_reward_body(
        queries: Sequence[str], prompts: Sequence[str] | None, labels: Sequence[Any] | None, extra: dict[str, Any]
    ) -> bytes:
        payload: dict[str, Any] = {"query": list(queries)}
        if prompts is not None:
            payload["prompts"] = list(prompts)
        if labels is not None:
            payload["labels"] = list(labels)
        payload.update({k: v for k, v in extra.items() if v is not None})
        return encode(payload)


class RewardClient(_ClientBase):
    """Blocking client. Thread-safe; reuse one instance (it keeps connections open).

    >>> with RewardClient(["http://rm-a:8000", "http://rm-b:8000"]) as client:
    ...     batch = client.score([{"response": "<answer>yes</answer>", "ground_truth": "yes",
    ...                            "task_type": "yes_no"}])
    """

    def __init__(self, urls: str | Sequence[str], **kwargs: Any) -> None:
        super().__init__(urls, **kwargs)
        self._http = httpx.Client(timeout=self._timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def score(
        self,
        items: Sequence[Mapping[str, Any]],
        *,
        format_weight: float | None = None,
        bmas_reduction: Literal["sum", "mean"] | None = None,
    ) -> ScoreBatch:
        """Score items ``{"response", "ground_truth", "task_type", "id"?, "group_id"?}``; one result
        per item, in order. Batches above ``max_batch_items`` go out as several requests."""
        chunks, bodies = self._plan(items, format_weight, bmas_reduction)
        answers = [self._send("POST", "/score", body, "results") for body in bodies]
        return self._merge(len(items), chunks, answers)

    def get_reward(
        self,
        queries: Sequence[str],
        prompts: Sequence[str] | None = None,
        labels: Sequence[Any] | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """OpenRLHF's protocol (POST /get_reward): ``{"rewards", "scores", "extra_logs"}``."""
        return self._send("POST", "/get_reward", self._get_reward_body(queries, prompts, labels, extra), "rewards")

    def info(self) -> dict[str, Any]:
        """GET /v1/info from the first URL that answers."""
        return self._send("GET", "/v1/info", None, "")

    def _send(self, method: str, path: str, body: bytes | None, expect: str) -> dict[str, Any]:
        state = RetryState(self._endpoints, self.retry)
        while (step := state.next()) is not None:
            url, delay = step
            if delay:
                time.sleep(delay)
            try:
                response = self._http.request(method, url + path, content=body, headers=self._headers)
                answer = read_answer(url, response.status_code, response.headers, response.content, expect)
            except httpx.TransportError as exc:
                state.failed(url, _describe(exc))
                continue
            except Retryable as exc:
                state.failed(url, exc.reason, exc.retry_after)
                continue
            state.succeeded(url)
            return answer
        raise state.give_up()


class AsyncRewardClient(_ClientBase):
    """Asyncio twin of :class:`RewardClient`. Bound to the event loop it is first used on (as
    ``httpx.AsyncClient`` is); split requests of one call go out concurrently."""

    def __init__(self, urls: str | Sequence[str], *, max_concurrency: int = 4, **kwargs: Any) -> None:
        super().__init__(urls, **kwargs)
        self.max_concurrency = max(1, max_concurrency)
        self._http = httpx.AsyncClient(timeout=self._timeout)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def score(
        self,
        items: Sequence[Mapping[str, Any]],
        *,
        format_weight: float | None = None,
        bmas_reduction: Literal["sum", "mean"] | None = None,
    ) -> ScoreBatch:
        """See :meth:`RewardClient.score`."""
        chunks, bodies = self._plan(items, format_weight, bmas_reduction)
        gate = asyncio.Semaphore(self.max_concurrency)

        async def one(body: bytes) -> dict[str, Any]:
            async with gate:
                return await self._send("POST", "/score", body, "results")

        answers = list(await asyncio.gather(*(one(b) for b in bodies)))
        return self._merge(len(items), chunks, answers)

    async def get_reward(
        self,
        queries: Sequence[str],
        prompts: Sequence[str] | None = None,
        labels: Sequence[Any] | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """See :meth:`RewardClient.get_reward`."""
        body = self._get_reward_body(queries, prompts, labels, extra)
        return await self._send("POST", "/get_reward", body, "rewards")

    async def info(self) -> dict[str, Any]:
        """See :meth:`RewardClient.info`."""
        return await self._send("GET", "/v1/info", None, "")

    async def _send(self, method: str, path: str, body: bytes | None, expect: str) -> dict[str, Any]:
        state = RetryState(self._endpoints, self.retry)
        while (step := state.next()) is not None:
            url, delay = step
            if delay:
                await asyncio.sleep(delay)
            try:
                response = await self._http.request(method, url + path, content=body, headers=self._headers)
                answer = read_answer(url, response.status_code, response.headers, response.content, expect)
            except httpx.TransportError as exc:
                state.failed(url, _describe(exc))
                continue
            except Retryable as exc:
                state.failed(url, exc.reason, exc.retry_after)
                continue
            state.succeeded(url)
            return answer
        raise state.give_up()
