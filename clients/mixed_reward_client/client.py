"""``RewardClient`` and ``AsyncRewardClient``: POST /score (and /get_reward) with timeouts,
retries, failover across URLs and splitting of large batches.

The two classes share every decision (``_policy``, ``_batching``); they differ only in how they
send and sleep. Both raise instead of guessing: :class:`BadRequest` for a 4xx, and
:class:`ServerUnavailable` once every retry on every URL has failed or the call's deadline
(``RetryPolicy.deadline``, 10 minutes by default) has passed.

A call may name the table (policy) that scores its open-ended items (``model``), the training job
it belongs to (``job``: the service's fair scheduling and per-job difficulty state), its
``priority`` and its batch's ``deadline_seconds``: set once on the client, overridden per call.
``/score`` gets them as top-level body fields; ``/get_reward``, whose body is OpenRLHF's, as query
parameters. ``explain=True`` asks for ``parsed`` on every result: what the rule read; ``profile``
and ``tiou_boundary_penalty`` choose how items are scored (unset: the server's defaults).

Every POST carries an ``Idempotency-Key`` header: a fresh random key per request (one chunk of a
split batch), the same on every retry and failover of it. A retry after a lost answer (the server
committed the request's difficulty-state update, then died or timed out before answering) then
updates nothing twice: the server remembers the keys it has applied.
"""

from __future__ import annotations

import asyncio
import numbers
import time
import uuid
from collections.abc import Awaitable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from urllib.parse import parse_qsl, urlencode

import httpx

from mixed_reward_client._batching import ScoreBatch, item_payload, merge, plan_chunks
from mixed_reward_client._policy import Endpoints, Retryable, RetryPolicy, RetryState, encode, read_answer
from mixed_reward_client.errors import BadRequest, RewardClientError

if TYPE_CHECKING:
    from typing_extensions import Self

T = TypeVar("T")
DEFAULT_TIMEOUT = 120.0  # a few thousand open-ended items on a CPU server take tens of seconds
DEFAULT_MAX_BATCH_ITEMS = 2048  # well under the server's default limit of 8192 items per request
DEFAULT_MAX_BATCH_BYTES = 16 << 20  # well under the server's default body limit of 64 MiB

Piece = tuple[list[int], dict[str, Any]]  # item indices of one request, and its answer
Exchanged = tuple[int, Mapping[str, str], bytes]  # one attempt's status, headers and body
IDEMPOTENCY_HEADER = "Idempotency-Key"


def _retry_state(
    endpoints: Endpoints, policy: RetryPolicy, method: str, deadline_at: float | None
) -> RetryState:
    """One request's attempts; a POST gets its idempotency key here, once, so every attempt of it
    (and only of it) carries the same key. GETs change nothing and need none."""
    return RetryState(endpoints, policy, deadline_at, uuid.uuid4().hex if method == "POST" else None)


def _describe(exc: BaseException) -> str:
    text = str(exc) or "no detail"
    return f"{type(exc).__name__}: {text}"


#: The top-level ``/score`` fields that say whom a request is for (SPEC §15), in the order sent.
TENANCY_FIELDS: tuple[str, ...] = ("model", "job", "priority", "deadline_seconds")
#: Ray Serve's model-multiplexing header: a Serve proxy sends the request to a replica holding it.
MULTIPLEXED_MODEL_HEADER = "serve_multiplexed_model_id"


def path_model(path: str) -> str | None:
    """The ``model`` of a request path's query string (``/score?model=b``), if any."""
    _, _, query = path.partition("?")
    return next((value for key, value in parse_qsl(query) if key == "model" and value), None)


def tenancy_fields(
    model: str | None = None, job: str | None = None, priority: int | None = None,
    deadline_seconds: float | None = None,
) -> dict[str, Any]:
    """The tenancy fields that are set, in wire form. Checked here only for type: the service
    validates the values (an unknown table or a malformed job name is a 422 naming the field)."""
    out: dict[str, Any] = {}
    for name, value in (("model", model), ("job", job)):
        if value is not None:
            if not isinstance(value, str):
                raise RewardClientError(f"{name} must be a string, got {type(value).__name__}")
            out[name] = value
    if priority is not None:
        if isinstance(priority, bool) or not isinstance(priority, numbers.Integral):
            raise RewardClientError(f"priority must be an integer, got {priority!r}")
        out["priority"] = int(priority)
    if deadline_seconds is not None:
        if isinstance(deadline_seconds, bool) or not isinstance(deadline_seconds, numbers.Real):
            raise RewardClientError(f"deadline_seconds must be a number of seconds, got {deadline_seconds!r}")
        out["deadline_seconds"] = float(deadline_seconds)
    return out


class _Prepared:
    """A scoring call, encoded: each item's JSON once, so that chunks (and re-splits after a
    413) are assembled from bytes, and an unencodable item is named before anything is sent.
    ``options`` go in the body's ``options``; ``tenancy`` (model, job, ...) at its top level."""

    def __init__(
        self, wire: list[dict[str, Any]], parts: list[bytes], options: dict[str, Any],
        tenancy: Mapping[str, Any] | None = None,
    ) -> None:
        self.wire = wire
        self.parts = parts
        self.tenancy = dict(tenancy or {})
        tail = b',"options":' + encode(options) if options else b""
        for name, value in self.tenancy.items():
            tail += b',"' + name.encode() + b'":' + encode(value)
        self._tail = tail + b"}"

    def body(self, chunk: list[int]) -> bytes:
        return b'{"items":[' + b",".join(self.parts[i] for i in chunk) + b"]" + self._tail

    @property
    def path(self) -> str:
        """``/score``, with ``?model=`` when the call names a table: the body's ``model`` decides,
        the query lets a Ray Serve deployment route the request to a replica holding the table."""
        model = self.tenancy.get("model")
        return "/score" + ("?" + urlencode({"model": model}) if model else "")

    @property
    def overhead(self) -> int:
        return len(self._tail) + 12


def encode_item(item: Mapping[str, Any], label: str) -> tuple[dict[str, Any], bytes]:
    """The wire form of one item and its JSON; :class:`RewardClientError` naming ``label`` if it
    cannot be sent (NaN or infinity, an object JSON has no form for)."""
    wire = item_payload(item)
    try:
        return wire, encode(wire)
    except (TypeError, ValueError) as exc:
        raise RewardClientError(f"{label} cannot be sent as JSON: {exc}") from exc


def _options(values: Mapping[str, Any]) -> dict[str, Any]:
    """The body's ``options`` from keyword values, the unset (None) ones left out so that the
    server's defaults apply."""
    out: dict[str, Any] = {}
    if values.get("format_weight") is not None:
        out["format_weight"] = float(values["format_weight"])
    for key in ("bmas_reduction", "profile"):
        if values.get(key) is not None:
            out[key] = str(values[key])
    for key in ("explain", "tiou_boundary_penalty"):
        if values.get(key) is not None:
            out[key] = bool(values[key])
    return out


class _ClientBase:
    """Configuration shared by the sync and the async client."""

    #: What ``_exchange`` raises when the endpoint, not the request, failed: retried elsewhere.
    _transport_errors: tuple[type[BaseException], ...] = (httpx.TransportError,)

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float = 5.0,
        retry: RetryPolicy | None = None,
        max_batch_items: int = DEFAULT_MAX_BATCH_ITEMS,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
        format_weight: float | None = None,
        bmas_reduction: Literal["sum", "mean"] | None = None,
        explain: bool | None = None,
        model: str | None = None,
        job: str | None = None,
        priority: int | None = None,
        deadline_seconds: float | None = None,
        profile: str | None = None,
        tiou_boundary_penalty: bool | None = None,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self._endpoints = Endpoints(urls, self.retry.failback_after)
        self.max_batch_items = max_batch_items
        self.max_batch_bytes = max_batch_bytes
        #: the body's ``options`` sent with every call unless the call overrides them
        self.options: dict[str, Any] = _options({
            "format_weight": format_weight, "bmas_reduction": bmas_reduction, "explain": explain,
            "profile": profile, "tiou_boundary_penalty": tiou_boundary_penalty,
        })
        #: model/job/priority/deadline_seconds sent with every call unless the call overrides them
        self.tenancy: dict[str, Any] = tenancy_fields(model, job, priority, deadline_seconds)
        self._read_timeout = float(timeout)
        self._connect_timeout = min(connect_timeout, timeout)
        self._timeout = httpx.Timeout(timeout, connect=self._connect_timeout)
        self._headers = {"content-type": "application/json", "accept": "application/json"}
        if token:
            self._headers["authorization"] = f"Bearer {token}"

    @property
    def urls(self) -> list[str]:
        return list(self._endpoints.urls)

    def _prepare(self, items: Sequence[Mapping[str, Any]], overrides: Mapping[str, Any]) -> _Prepared:
        encoded = [encode_item(item, f"item {index}") for index, item in enumerate(items)]
        return self._prepared([w for w, _ in encoded], [b for _, b in encoded], overrides)

    def _prepared(
        self, wire: list[dict[str, Any]], parts: list[bytes], overrides: Mapping[str, Any] | None = None
    ) -> _Prepared:
        """The call's body parts: the client's options and tenancy, with ``overrides`` (one call's
        keyword arguments; None leaves the client's setting) on top."""
        overrides = overrides or {}
        options = {**self.options, **_options(overrides)}
        tenancy = {**self.tenancy, **tenancy_fields(**{k: overrides.get(k) for k in TENANCY_FIELDS})}
        return _Prepared(wire, parts, options, tenancy)

    def _get_reward_path(self, overrides: Mapping[str, Any]) -> str:
        """``/get_reward`` with the tenancy in the query: the body is OpenRLHF's, which has no
        place for it (the service ignores unknown body fields), and the query is how URL-configured
        trainers name their table and job too."""
        tenancy = {**self.tenancy, **tenancy_fields(**{k: overrides.get(k) for k in TENANCY_FIELDS})}
        return "/get_reward" + ("?" + urlencode(tenancy) if tenancy else "")

    def _chunks(self, prepared: _Prepared, indices: list[int] | None = None, max_items: int | None = None) -> list[list[int]]:
        """Requests for ``indices`` (default: every item), by item count and encoded size."""
        indices = list(range(len(prepared.wire))) if indices is None else indices
        planned = plan_chunks(
            [prepared.wire[i] for i in indices],
            max_items or self.max_batch_items,
            [len(prepared.parts[i]) for i in indices],
            max(1, self.max_batch_bytes - prepared.overhead),
        )
        return [[indices[j] for j in chunk] for chunk in planned]

    def _resplit(self, prepared: _Prepared, chunk: list[int], exc: BadRequest, split: bool) -> list[list[int]]:
        """After a 413 (too many items or bytes for this server): the chunk in halves, once."""
        if exc.status_code != 413 or not split or len(chunk) < 2:
            raise exc
        return self._chunks(prepared, chunk, max_items=(len(chunk) + 1) // 2)

    def _attempt_headers(self, state: RetryState, path: str = "") -> dict[str, str]:
        """The headers of one attempt: the client's, its request's idempotency key, and the table
        a ``?model=`` in the path names as Serve's multiplexed model id (a Ray Serve proxy routes by
        that header only; a single-process server ignores it)."""
        headers = self._headers
        key = state.idempotency_key
        if key is not None:
            headers = {**headers, IDEMPOTENCY_HEADER: key}
        model = path_model(path)
        if model is not None:
            headers = {**headers, MULTIPLEXED_MODEL_HEADER: model}
        return headers

    def _timeout_for(self, state: RetryState) -> httpx.Timeout:
        """The configured timeouts, cut to the time left before the call's deadline."""
        left = state.remaining()
        if left is None or left >= self._read_timeout:
            return self._timeout
        left = max(left, 0.001)
        return httpx.Timeout(left, connect=min(self._connect_timeout, left))

    @staticmethod
    def _merge(count: int, pieces: list[Piece]) -> ScoreBatch:
        try:
            return merge(count, [c for c, _ in pieces], [a for _, a in pieces])
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
        try:
            return encode(payload)
        except (TypeError, ValueError) as exc:
            raise RewardClientError(f"the request cannot be sent as JSON: {exc}") from exc


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
        explain: bool | None = None,
        model: str | None = None,
        job: str | None = None,
        priority: int | None = None,
        deadline_seconds: float | None = None,
        profile: str | None = None,
        tiou_boundary_penalty: bool | None = None,
    ) -> ScoreBatch:
        """Score items ``{"response", "ground_truth", "task_type", "id"?, "group_id"?, "prompt_id"?}``
        (``prompt_id`` feeds the service's difficulty posterior); one result per item, in order.
        Batches above ``max_batch_items`` items or ``max_batch_bytes`` bytes go out as several
        requests; a request the server refuses as too large (413) is split in two once. The whole
        call, retries included, ends within the retry policy's ``deadline``.

        Each keyword overrides the client's setting for this call (None keeps it, and an option
        set nowhere is the server's default): ``explain`` adds ``parsed`` to every result;
        ``profile`` picks the reward profile (``mixed-r1``, ``robust``), ``tiou_boundary_penalty``
        Time-R1's penalty for temporal grounding; ``model`` names the table, ``job`` the training
        job; ``priority`` and ``deadline_seconds`` order this job's work on the service. Every
        request of a split call carries the same ones."""
        prepared = self._prepare(items, {
            "format_weight": format_weight, "bmas_reduction": bmas_reduction, "explain": explain, "model": model,
            "job": job, "priority": priority, "deadline_seconds": deadline_seconds, "profile": profile,
            "tiou_boundary_penalty": tiou_boundary_penalty,
        })
        deadline_at = self.retry.deadline_at()
        pieces: list[Piece] = []
        for chunk in self._chunks(prepared):
            pieces.extend(self._score_chunk(prepared, chunk, deadline_at, split=True))
        return self._merge(len(items), pieces)

    def _score_chunk(self, prepared: _Prepared, chunk: list[int], deadline_at: float | None, split: bool) -> list[Piece]:
        try:
            return [(chunk, self._send("POST", prepared.path, prepared.body(chunk), "results", deadline_at))]
        except BadRequest as exc:
            halves = self._resplit(prepared, chunk, exc, split)
        return [piece for half in halves for piece in self._score_chunk(prepared, half, deadline_at, split=False)]

    def get_reward(
        self,
        queries: Sequence[str],
        prompts: Sequence[str] | None = None,
        labels: Sequence[Any] | None = None,
        *,
        model: str | None = None,
        job: str | None = None,
        priority: int | None = None,
        deadline_seconds: float | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """OpenRLHF's protocol (POST /get_reward): ``{"rewards", "scores", "extra_logs"}``. ``model``,
        ``job``, ``priority`` and ``deadline_seconds`` (default: the client's) go in the query;
        ``extra`` (``eos``, ``task_type``, ``format_weight``, ...) in the body."""
        path = self._get_reward_path({"model": model, "job": job, "priority": priority,
                                      "deadline_seconds": deadline_seconds})
        return self._send("POST", path, self._get_reward_body(queries, prompts, labels, extra), "rewards")

    def info(self) -> dict[str, Any]:
        """GET /v1/info from the first URL that answers."""
        return self._send("GET", "/v1/info", None, "")

    def _exchange(self, method: str, url: str, path: str, body: bytes | None, state: RetryState) -> Exchanged:
        """One attempt on one endpoint: (status, headers, body). Raises one of ``_transport_errors``
        when the endpoint, not the request, failed. The Ray client overrides only this."""
        response = self._http.request(
            method, url + path, content=body, headers=self._attempt_headers(state, path), timeout=self._timeout_for(state)
        )
        return response.status_code, response.headers, response.content

    def _send(
        self, method: str, path: str, body: bytes | None, expect: str, deadline_at: float | None = None
    ) -> dict[str, Any]:
        state = _retry_state(self._endpoints, self.retry, method, deadline_at)
        while (step := state.next()) is not None:
            url, delay = step
            if delay:
                time.sleep(delay)
            try:
                answer = read_answer(url, *self._exchange(method, url, path, body, state), expect)
            except self._transport_errors as exc:
                state.failed(url, _describe(exc))
                continue
            except Retryable as exc:
                state.failed(url, exc.reason, exc.retry_after)
                continue
            state.succeeded(url)
            return answer
        raise state.give_up()


async def _all_or_cancel(coros: Sequence[Awaitable[T]]) -> list[T]:
    """``gather`` that stops the others on the first failure: their requests and retries are
    cancelled, not left running in the background. Python 3.10 has no TaskGroup."""
    if len(coros) <= 1:
        return [await c for c in coros]
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        pending = [t for t in tasks if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
    failures = [t.exception() for t in tasks if not t.cancelled() and t.exception() is not None]
    if failures:
        raise failures[0]  # type: ignore[misc]
    return [t.result() for t in tasks]


class AsyncRewardClient(_ClientBase):
    """Asyncio twin of :class:`RewardClient`. Bound to the event loop it is first used on (as
    ``httpx.AsyncClient`` is); split requests of one call go out concurrently, and the first one
    to fail cancels the others."""

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
        explain: bool | None = None,
        model: str | None = None,
        job: str | None = None,
        priority: int | None = None,
        deadline_seconds: float | None = None,
        profile: str | None = None,
        tiou_boundary_penalty: bool | None = None,
    ) -> ScoreBatch:
        """See :meth:`RewardClient.score`."""
        return await self._score_prepared(self._prepare(items, {
            "format_weight": format_weight, "bmas_reduction": bmas_reduction, "explain": explain, "model": model,
            "job": job, "priority": priority, "deadline_seconds": deadline_seconds, "profile": profile,
            "tiou_boundary_penalty": tiou_boundary_penalty,
        }))

    async def _score_prepared(self, prepared: _Prepared) -> ScoreBatch:
        deadline_at = self.retry.deadline_at()
        gate = asyncio.Semaphore(self.max_concurrency)

        async def one(chunk: list[int], split: bool) -> list[Piece]:
            try:
                async with gate:
                    answer = await self._send("POST", prepared.path, prepared.body(chunk), "results", deadline_at)
                return [(chunk, answer)]
            except BadRequest as exc:
                halves = self._resplit(prepared, chunk, exc, split)
            parts = await _all_or_cancel([one(half, False) for half in halves])
            return [piece for part in parts for piece in part]

        pieces = await _all_or_cancel([one(chunk, True) for chunk in self._chunks(prepared)])
        return self._merge(len(prepared.wire), [piece for part in pieces for piece in part])

    async def get_reward(
        self,
        queries: Sequence[str],
        prompts: Sequence[str] | None = None,
        labels: Sequence[Any] | None = None,
        *,
        model: str | None = None,
        job: str | None = None,
        priority: int | None = None,
        deadline_seconds: float | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """See :meth:`RewardClient.get_reward`."""
        path = self._get_reward_path({"model": model, "job": job, "priority": priority,
                                      "deadline_seconds": deadline_seconds})
        body = self._get_reward_body(queries, prompts, labels, extra)
        return await self._send("POST", path, body, "rewards")

    async def info(self) -> dict[str, Any]:
        """See :meth:`RewardClient.info`."""
        return await self._send("GET", "/v1/info", None, "")

    async def _exchange(self, method: str, url: str, path: str, body: bytes | None, state: RetryState) -> Exchanged:
        """See :meth:`RewardClient._exchange`."""
        # The deadline bounds the request through its timeouts, not asyncio.wait_for, which
        # before Python 3.12 can swallow a cancellation (and a cancelled chunk would go on).
        response = await self._http.request(
            method, url + path, content=body, headers=self._attempt_headers(state, path), timeout=self._timeout_for(state)
        )
        return response.status_code, response.headers, response.content

    async def _send(
        self, method: str, path: str, body: bytes | None, expect: str, deadline_at: float | None = None
    ) -> dict[str, Any]:
        state = _retry_state(self._endpoints, self.retry, method, deadline_at)
        while (step := state.next()) is not None:
            url, delay = step
            if delay:
                await asyncio.sleep(delay)
            try:
                answer = read_answer(url, *(await self._exchange(method, url, path, body, state)), expect)
            except self._transport_errors as exc:
                state.failed(url, _describe(exc))
                continue
            except Retryable as exc:
                state.failed(url, exc.reason, exc.retry_after)
                continue
            state.succeeded(url)
            return answer
        raise state.give_up()
