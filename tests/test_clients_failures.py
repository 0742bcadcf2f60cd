"""Failure modes of the client distribution: proxy error bodies, retry rounds over several URLs,
failback to a recovered first URL, the per-call deadline, cancelling sibling chunks, group
statistics of split groups, 413 re-splitting, per-sample encoding errors in the verl batcher, and
no client leaked per event loop.

The reward service is the real one (``server`` fixture, ``running_server``); where a failure the
real service never produces is needed (a proxy's 502, a server that hangs), a small real HTTP
server on a loopback port answers instead. Nothing of the client is mocked."""

from __future__ import annotations

import asyncio
import gc
import json
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import mixed_reward_client._config as client_config
import numpy as np
import pytest
from mixed_reward_client import (
    AsyncRewardClient,
    BadRequest,
    RetryPolicy,
    RewardClient,
    RewardClientError,
    ServerUnavailable,
)
from mixed_reward_client._policy import Endpoints, Retryable, RetryState, read_answer
from mixed_reward_client.trl import mixed_reward_func
from mixed_reward_client.verl import Coalescer, compute_score
from serving import running_server

from reward_server.rewards.groups import summarise_group

YES = {"response": "<think>look</think><answer>Yes</answer>", "ground_truth": "yes", "task_type": "yes_no"}
NO = {**YES, "response": "<think>look</think><answer>no</answer>"}


def dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


Reply = tuple[int, dict[str, str], bytes]


@contextmanager
def http_stub(answer: Callable[[bytes, int], Reply], delay: float = 0.0) -> Iterator[tuple[str, list[bytes]]]:
    """A real HTTP server on a loopback port: ``answer(body, n)`` gives (status, headers, body) for
    the n-th request; ``delay`` seconds of silence first (cut short on exit). Yields (url, bodies seen)."""
    seen: list[bytes] = []
    stop = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as uvicorn: no connection per retry

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            seen.append(body)
            if delay and stop.wait(delay):
                return
            status, headers, content = answer(body, len(seen))
            self.send_response(status)
            for name, value in {"content-length": str(len(content)), **headers}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(content)

        do_GET = do_POST

        def log_message(self, *_: object) -> None:
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 256  # the default backlog of 5 drops connections under fast retries

        def handle_error(self, *_: object) -> None:
            pass  # a client that gave up (deadline, cancel) closed its connection: nothing to report

    httpd = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", seen
    finally:
        stop.set()
        httpd.shutdown()
        httpd.server_close()


def proxy_errors(_: bytes, n: int) -> Reply:
    """What an nginx/envoy in front of a restarting service answers."""
    if n % 2:
        return 502, {"content-type": "application/json"}, b'{"error":"upstream connect error"}'
    return 429, {"content-type": "application/json", "retry-after": "0"}, b'{"error":"rate limited"}'


# --- finding 1: error bodies that are not this service's ------------------------------------


def test_proxy_error_bodies_are_retried_not_crashed(server):
    with http_stub(proxy_errors) as (proxy, seen):
        client = RewardClient(proxy, retry=RetryPolicy(max_attempts=4, backoff=0.01))
        with client, pytest.raises(ServerUnavailable) as caught:
            client.score([YES])
        assert len(seen) == 4
        reasons = [a.reason for a in caught.value.attempts]
        assert reasons == ["HTTP 502: upstream connect error", "HTTP 429: rate limited"] * 2
        with RewardClient([proxy, server.url], retry=RetryPolicy(max_attempts=2, backoff=0.01)) as client:
            assert client.score([YES]).rewards == [2.0]  # failed over past the proxy's 502


@pytest.mark.parametrize(("content", "message"), [
    (b'{"error": {"type": "overloaded", "message": "queue full"}}', "queue full"),
    (b'{"error": "upstream connect error"}', "upstream connect error"),
    (b'{"detail": "Service Unavailable"}', "Service Unavailable"),
    (b'["a", 1]', '["a", 1]'),
    (b"<html>502 Bad Gateway</html>", "<html>502 Bad Gateway</html>"),
    (b"", "no body"),
])
def test_read_answer_takes_any_retryable_body(content, message):
    with pytest.raises(Retryable) as caught:
        read_answer("http://x", 503, {}, content, "results")
    assert caught.value.reason == f"HTTP 503: {message}"


# --- finding 2: rounds over all URLs ----------------------------------------------------------


def test_a_backup_url_does_not_shorten_the_retry_time():
    policy = RetryPolicy(max_attempts=4, backoff=0.05, max_backoff=0.2, jitter=0.0)
    errors = {}
    for urls in ([dead_url()], [dead_url(), dead_url()]):
        with RewardClient(urls, retry=policy) as client:
            started = time.monotonic()
            with pytest.raises(ServerUnavailable) as caught:
                client.score([YES])
            errors[len(urls)] = (caught.value, time.monotonic() - started)
    one, one_s = errors[1]
    two, two_s = errors[2]
    assert (len(one.attempts), one.rounds) == (4, 4) and (len(two.attempts), two.rounds) == (8, 4)
    assert one_s >= 0.35 and two_s >= 0.35  # 0.05 + 0.1 + 0.2 of backoff either way
    assert "8 attempts in 4 round(s)" in str(two) and "2 URL(s)" in str(two)


def test_default_policy_rides_out_15s_with_any_number_of_urls():
    """The documented numbers (docs/trainers.md): 6 rounds, backoffs 0.5 + 1 + 2 + 4 + 8 s, whatever the URL count."""
    for count in (1, 2, 3):
        state = RetryState(Endpoints([f"http://rm-{k}:8000" for k in range(count)]), RetryPolicy(jitter=0.0))
        waited = 0.0
        while (step := state.next()) is not None:
            waited += step[1]
            state.failed(step[0], "ConnectError: refused")
        assert (waited, len(state.attempts), state.rounds) == (15.5, 6 * count, 6)
    message = str(state.give_up())
    assert message.startswith("reward service unavailable: 18 attempts in 6 round(s) over ")
    assert "on 3 URL(s) ['http://rm-0:8000', 'http://rm-1:8000', 'http://rm-2:8000'] all failed; " in message


# --- finding 5: back to a recovered first URL -------------------------------------------------


def test_failback_to_the_first_url_after_the_cooldown(server, default_table):
    with running_server(default_table) as primary:
        state = primary.app.state.service
        state.ready = False  # 503 until it is back
        policy = RetryPolicy(max_attempts=2, backoff=0.01, failback_after=0.3)
        with RewardClient([primary.url, server.url], retry=policy) as client:
            assert client.score([YES]).rewards == [2.0]
            assert client._endpoints.order()[0] == server.url  # failed over
            state.ready = True
            assert client.score([YES]).rewards == [2.0]
            assert client._endpoints.order()[0] == server.url  # within the cooldown: the backup
            time.sleep(0.35)
            assert client._endpoints.order() == [primary.url, server.url]  # configured order again
            assert client.score([NO]).rewards == [1.0]
            assert client._endpoints.order()[0] == primary.url  # the primary answered
        with RewardClient([dead_url(), server.url], retry=RetryPolicy(failback_after=None)) as client:
            client.score([YES])
            assert client._endpoints.order()[0] == server.url


# --- finding 6: one deadline per call ---------------------------------------------------------


def overloaded(_: bytes, n: int) -> Reply:
    return 200, {"content-type": "application/json"}, b'{"results": []}'


@pytest.mark.parametrize("timeout", [0.3, 30.0])
def test_deadline_bounds_a_call_on_a_server_that_never_answers(timeout):
    policy = RetryPolicy(max_attempts=50, backoff=0.05, max_backoff=0.1, deadline=1.0)
    with http_stub(overloaded, delay=30) as (slow, seen):
        with RewardClient(slow, timeout=timeout, retry=policy) as client:
            started = time.monotonic()
            with pytest.raises(ServerUnavailable, match="deadline of 1s was reached") as caught:
                client.score([YES])
            elapsed = time.monotonic() - started
        assert 0.95 <= elapsed < 2.0
        assert len(seen) <= 3  # the batch was not re-sent 50 times onto the slow server
        assert "ReadTimeout" in caught.value.attempts[-1].reason

        async def main():
            async with AsyncRewardClient(slow, timeout=timeout, retry=policy) as client:
                started = time.monotonic()
                with pytest.raises(ServerUnavailable, match="deadline"):
                    await client.score([YES])
                return time.monotonic() - started

        assert 0.95 <= asyncio.run(main()) < 2.0


def test_deadline_setting_reaches_the_adapters(monkeypatch):
    monkeypatch.setenv("MIXED_REWARD_DEADLINE", "42")
    settings = client_config.resolve("http://127.0.0.1:9")
    assert settings.client_kwargs()["retry"].deadline == 42.0
    assert client_config.resolve("http://127.0.0.1:9", deadline=5).client_kwargs()["retry"].deadline == 5.0
    assert RetryPolicy().deadline == 600.0


# --- finding 7: a failed chunk cancels its siblings -------------------------------------------


def bad_or_busy(body: bytes, _: int) -> Reply:
    if b"BAD" in body:
        error = {"error": {"type": "invalid_item", "message": "items[0].task_type: BAD", "details": []}}
        return 422, {"content-type": "application/json"}, json.dumps(error).encode()
    return 503, {"content-type": "application/json"}, b'{"error": {"message": "not ready"}}'


def test_a_failed_chunk_cancels_the_other_chunks_retries():
    patient = RetryPolicy(max_attempts=200, backoff=0.02, max_backoff=0.02)
    with http_stub(bad_or_busy) as (url, seen):
        async def main():
            async with AsyncRewardClient(url, retry=patient, max_batch_items=1) as client:
                started = time.monotonic()
                with pytest.raises(BadRequest):
                    await client.score([{**YES, "task_type": "BAD"}, YES, YES])
                raised_after = time.monotonic() - started
                await asyncio.sleep(0.05)  # requests already on the wire when it raised arrive
                sent = len(seen)
                await asyncio.sleep(0.3)  # the loop keeps running: would the siblings retry on?
                return raised_after, sent, len(seen)

        raised_after, sent, later = asyncio.run(main())
    assert raised_after < 1.0
    assert later == sent  # nothing more was sent after the call failed


# --- finding 9: group statistics of a split group; size limits and 413 ------------------------


def test_a_split_group_gets_statistics_over_all_its_results(server):
    big = [{**(YES if k % 3 else NO), "group_id": "big", "id": k} for k in range(6)]  # split: 6 > 4
    whole = [{**YES, "group_id": 7}, {**YES, "group_id": 7}]  # fits, zero variance
    with RewardClient(server.url, max_batch_items=4) as client:
        batch = client.score(big + whole)
    assert batch.requests == 2  # [big x4], [big x2, 7 x2]
    assert [g["group_id"] for g in batch.groups] == ["big", 7]
    rewards = [r["reward"] for r in batch.results[:6]]
    assert rewards == [1.0, 2.0, 2.0, 1.0, 2.0, 2.0]
    expected = summarise_group("big", rewards)  # the server's own function
    assert batch.groups[0] == {**expected.__dict__}
    assert batch.groups[0]["size"] == 6 and not batch.groups[0]["zero_variance"]
    assert batch.groups[1]["size"] == 2 and batch.groups[1]["zero_variance"]


def test_batches_split_by_bytes_and_resplit_once_after_413(default_table):
    items = [{**YES, "ground_truth": "yes", "id": f"{k}-" + "x" * 150} for k in range(30)]  # ~7 kB
    with running_server(default_table, max_body_bytes=4096) as srv:
        with RewardClient(srv.url) as client:  # the default byte limit is far above 4096: a 413
            batch = client.score(items)
        assert batch.rewards == [2.0] * 30 and batch.requests == 2
        assert [r["id"] for r in batch.results] == [i["id"] for i in items]
        with RewardClient(srv.url, max_batch_bytes=2000) as client:  # split before sending
            batch = client.score(items)
        assert batch.rewards == [2.0] * 30 and batch.requests >= 4

        async def main():
            async with AsyncRewardClient(srv.url) as client:
                return await client.score(items)

        assert asyncio.run(main()).rewards == [2.0] * 30
        with RewardClient(srv.url) as client, pytest.raises(BadRequest) as caught:
            client.score(items * 3)  # halves of ~21 kB are still too large: split once, then fail
        assert caught.value.status_code == 413


# --- finding 10: one unencodable sample fails only its own verl call --------------------------


def test_verl_unencodable_sample_fails_alone_and_is_named(server):
    samples = [
        ("<answer>yes</answer>", "yes", {"task_type": "yes_no", "index": np.int64(0)}),
        ("<answer>3</answer>", 3, {"task_type": "chart", "index": np.int64(1)}),
        ("<answer>3</answer>", float("nan"), {"task_type": "chart", "index": np.int64(2)}),
        ("<answer>no</answer>", "yes", {"task_type": "yes_no", "index": np.int64(3)}),
    ]

    async def main():
        calls = [compute_score("chartqa", text, truth, extra, url=server.url, flush_ms=50)
                 for text, truth, extra in samples]
        results = await asyncio.gather(*calls, return_exceptions=True)
        slot = client_config._PER_LOOP[asyncio.get_running_loop()]
        return results, sum(c.requests for c in slot.values() if isinstance(c, Coalescer))

    results, requests = asyncio.run(main())
    assert [r["accuracy"] for i, r in enumerate(results) if i != 2] == [1.0, 1.0, 0.0]
    assert isinstance(results[2], RewardClientError) and not isinstance(results[2], ServerUnavailable)
    assert "data_source='chartqa'" in str(results[2]) and "extra_info.index=2" in str(results[2])
    assert "JSON" in str(results[2])
    assert requests == 1  # the three good samples went out together


# --- finding 3: no client leaked per event loop -----------------------------------------------


def test_no_client_is_leaked_per_asyncio_run(server):
    made: list[weakref.ref] = []
    held: list[AsyncRewardClient] = []
    reward = mixed_reward_func(server.url)

    async def one(adapter: str):
        if adapter == "verl":
            assert (await compute_score("x", "<answer>yes</answer>", "yes", None, url=server.url,
                                        task_type="yes_no"))["accuracy"] == 1.0
        else:
            assert await reward(["p"], ["<answer>yes</answer>"], task_type=["yes_no"], ground_truth=["yes"]) == [1.0]
        for value in client_config._PER_LOOP[asyncio.get_running_loop()].values():
            held.append(value.client if isinstance(value, Coalescer) else value)

    for adapter in ["verl", "trl"] * 3:
        asyncio.run(one(adapter))
        assert held[-1]._http.is_closed  # closed when asyncio.run shut its loop down
        made.append(weakref.ref(held.pop()))
    # A loop closed without asyncio.run's shutdown of async generators is swept on the next call.
    loop = asyncio.new_event_loop()
    loop.run_until_complete(one("verl"))
    loop.close()
    made.append(weakref.ref(held.pop()))
    asyncio.run(one("trl"))
    made.append(weakref.ref(held.pop()))
    assert loop not in client_config._PER_LOOP
    assert not any(other.is_closed() for other in client_config._PER_LOOP)
    gc.collect()
    assert len(made) == 8
    assert sum(ref() is not None for ref in made) <= 1  # (none, in fact: nothing holds them)
