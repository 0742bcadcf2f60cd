"""The client distribution (clients/) against the real server: values, errors, retries, failover,
batch splitting. No mock of the server anywhere: dead URLs are closed loopback ports."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tomllib
from mixed_reward_client import (
    AsyncRewardClient,
    BadRequest,
    RetryPolicy,
    RewardClient,
    RewardClientError,
    ServerUnavailable,
)
from serving import running_server

FAST = RetryPolicy(max_attempts=3, backoff=0.05, max_backoff=0.1)
YES = {"response": "<think>look</think><answer>Yes</answer>", "ground_truth": "yes", "task_type": "yes_no"}
OPEN = {"response": "<think>t</think><answer>a cat on a mat</answer>", "ground_truth": "a cat on a mat",
        "task_type": "open_ended"}


def dead_url() -> str:
    """A loopback port nobody listens on: connections are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_distribution_depends_on_httpx_only_and_imports_without_torch():
    meta = tomllib.loads((Path(__file__).parents[1] / "clients" / "pyproject.toml").read_text())
    assert [d.split(">")[0].split("=")[0] for d in meta["project"]["dependencies"]] == ["httpx"]
    code = (
        "import sys, mixed_reward_client, mixed_reward_client.verl, mixed_reward_client.trl, "
        "mixed_reward_client.openrlhf\n"
        "heavy = {'torch', 'fastapi', 'transformers', 'reward_server'} & set(sys.modules)\n"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_sync_scores_exact_values(server):
    with RewardClient(server.url, retry=FAST) as client:
        batch = client.score([YES, OPEN, {**YES, "response": "<answer>no</answer>"}])
    assert [r["reward"] for r in batch.results] == [2.0, 3.0, 0.0]
    assert batch.results[1]["accuracy"] == 2.0 and batch.results[1]["format"] == 1.0
    assert batch.results[1]["bmas_forward"] == pytest.approx(1.0)
    assert batch.requests == 1 and batch.table["vocab_size"] == 30522


def test_options_are_sent(server):
    with RewardClient(server.url, format_weight=0.0, bmas_reduction="mean") as client:
        assert client.score([OPEN]).rewards == [pytest.approx(1.0)]  # mean of two directions, no format
        assert client.score([OPEN], format_weight=0.5).rewards == [pytest.approx(1.5)]


def test_profile_and_tiou_penalty_are_sent_and_unset_means_the_servers_default(server):
    temporal = {"response": "<answer>10 to 20</answer>", "ground_truth": '{"segment": [10, 30], "duration": 100}',
                "task_type": "temporal_grounding"}
    with RewardClient(server.url, profile="robust", format_weight=0.0) as client:
        plain = client.score([temporal])
        assert plain.profile == "robust"
        assert plain.results[0]["accuracy"] == pytest.approx(0.5)  # tIoU 10/20, no penalty by default
        penalised = client.score([temporal], tiou_boundary_penalty=True, profile="mixed-r1")
    assert penalised.profile == "mixed-r1"
    assert penalised.results[0]["boundary_penalty"] == pytest.approx(0.9)  # (1 - 0/100) * (1 - 10/100)
    assert penalised.results[0]["accuracy"] == pytest.approx(0.45)
    with RewardClient(server.url) as client:
        assert client.score([temporal]).profile == "mixed-r1"


def test_async_scores_exact_values(server):
    async def main():
        async with AsyncRewardClient(server.url, retry=FAST) as client:
            return await client.score([YES, OPEN])

    assert asyncio.run(main()).rewards == [2.0, 3.0]


def test_numpy_values_are_sent_as_plain_json(server):
    item = {"response": "<answer>42</answer>", "ground_truth": np.int64(42), "task_type": "chart",
            "group_id": np.int64(7), "id": np.int32(3)}
    with RewardClient(server.url) as client:
        result = client.score([item]).results[0]
    assert (result["accuracy"], result["group_id"], result["id"]) == (1.0, 7, 3)


def test_item_fields_are_the_servers_request_item_fields():
    """The client's one list of item fields is exactly what /score reads: a field added to the
    server's RequestItem and not here would be dropped from every request (prompt_id once was)."""
    from mixed_reward_client._batching import (
        ITEM_FIELDS,
        OPTIONAL_ITEM_FIELDS,
        REQUIRED_ITEM_FIELDS,
        item_payload,
    )

    from reward_server.items.models import RequestItem

    fields = RequestItem.model_fields
    assert sorted(ITEM_FIELDS) == sorted(fields)
    assert sorted(REQUIRED_ITEM_FIELDS) == sorted(name for name, info in fields.items() if info.is_required())
    full = {name: f"value-{name}" for name in fields}
    assert item_payload({**full, "prompt": "not sent", "metadata": {}}) == full
    unset = {name: None for name in OPTIONAL_ITEM_FIELDS}
    assert item_payload({**full, **unset}) == {name: full[name] for name in REQUIRED_ITEM_FIELDS}


def test_ray_clients_build_items_with_the_shared_payload_code():
    """The Ray handle clients replace only the transport (``_exchange``): their items are built by
    the HTTP clients' code, so they send every item field (prompt_id included) the same way."""
    from mixed_reward_client.ray import AsyncRayRewardClient, RayRewardClient

    pairs = ((RayRewardClient, RewardClient), (AsyncRayRewardClient, AsyncRewardClient))
    for ray_client, http_client in pairs:
        assert ray_client.score is http_client.score
        assert ray_client._prepare is http_client._prepare
        # ... and so their explain option and tenancy (model, job, priority, deadline_seconds): the
        # same body fields, and the same /get_reward query, which the replica's app reads as HTTP does
        assert ray_client._prepared is http_client._prepared
        assert ray_client.get_reward is http_client.get_reward
        assert ray_client._get_reward_path is http_client._get_reward_path


def test_bad_request_is_not_retried_and_carries_the_body(server):
    bad = {**YES, "task_type": "sentiment"}
    with RewardClient([server.url, dead_url()], retry=RetryPolicy(max_attempts=5, backoff=5.0)) as client:
        started = time.monotonic()
        with pytest.raises(BadRequest) as caught:
            client.score([YES, bad])
    assert time.monotonic() - started < 2.0  # no backoff: a 4xx is final
    err = caught.value
    assert err.status_code == 422 and err.error_type == "invalid_item"
    assert err.details[0]["item"] == 1 and err.details[0]["field"] == "task_type"
    assert "yes_no" in err.details[0]["message"]  # names the valid types
    assert isinstance(err, RewardClientError)


def test_unauthorized_is_a_bad_request(default_table):
    with running_server(default_table, api_token="s3cret") as srv:
        with RewardClient(srv.url) as client, pytest.raises(BadRequest) as caught:
            client.score([YES])
        assert caught.value.status_code == 401
        with RewardClient(srv.url, token="s3cret") as client:
            assert client.score([YES]).rewards == [2.0]


def test_killed_server_retries_then_raises_not_zero(default_table):
    with running_server(default_table) as srv:
        client = RewardClient(srv.url, retry=RetryPolicy(max_attempts=4, backoff=0.05, max_backoff=0.2))
        assert client.score([YES]).rewards == [2.0]
    started = time.monotonic()
    with pytest.raises(ServerUnavailable) as caught:
        client.score([YES])
    elapsed = time.monotonic() - started
    client.close()
    err = caught.value
    assert len(err.attempts) == 4 and all(a.url == srv.url for a in err.attempts)
    assert "ConnectError" in err.attempts[-1].reason
    assert elapsed >= 0.05 + 0.1 + 0.2 * 0.99  # backed off between attempts
    assert "4 attempts" in str(err) and srv.url in str(err)


def test_failover_to_second_url_and_it_stays_preferred(server):
    first = dead_url()
    client = RewardClient([first, server.url], retry=FAST)
    assert client.score([YES]).rewards == [2.0]
    assert client._endpoints.order()[0] == server.url  # the next call goes straight to the live one
    assert client.score([OPEN]).rewards == [3.0]
    client.close()


def test_async_failover_and_async_killed(server):
    async def main():
        async with AsyncRewardClient([dead_url(), server.url], retry=FAST) as client:
            ok = await client.score([YES])
        async with AsyncRewardClient([dead_url(), dead_url()], retry=FAST) as client:
            with pytest.raises(ServerUnavailable) as caught:
                await client.score([YES])
        return ok, caught.value

    ok, err = asyncio.run(main())
    assert ok.rewards == [2.0]
    # 3 rounds over both URLs: each URL tried 3 times, as with one URL
    assert len(err.attempts) == 6 and len({a.url for a in err.attempts}) == 2 and err.rounds == 3


def test_503_not_ready_is_retried_until_the_server_is_back(default_table):
    # The real server answers 503 while it is not ready (starting or shutting down).
    with running_server(default_table) as srv:
        state = srv.app.state.service
        state.ready = False
        with RewardClient(srv.url, retry=FAST) as client:
            with pytest.raises(ServerUnavailable) as caught:
                client.score([YES])
            assert [a.reason.split(":")[0] for a in caught.value.attempts] == ["HTTP 503"] * 3
            patient = RetryPolicy(max_attempts=20, backoff=0.05, max_backoff=0.1)
            with RewardClient(srv.url, retry=patient) as client:
                # The timer starts after the clock, so the call cannot succeed before 0.3 s: it
                # succeeds only by retrying through the 503s.
                started = time.monotonic()
                threading.Timer(0.3, lambda: setattr(state, "ready", True)).start()
                assert client.score([YES]).rewards == [2.0]
                assert time.monotonic() - started >= 0.3


def test_large_batches_are_split_keeping_groups_whole(server):
    items = []
    for group in range(5):
        for k in range(3):
            correct = k < group % 3
            items.append({**YES, "response": "<answer>yes</answer>" if correct else "<answer>no</answer>",
                          "group_id": f"g{group}", "id": f"{group}-{k}"})
    items.insert(4, {**OPEN, "id": "solo"})
    with RewardClient(server.url, max_batch_items=7) as client:
        batch = client.score(items)
    assert batch.requests == 3  # 16 items, whole groups of 3 packed into requests of at most 7
    assert [r["id"] for r in batch.results] == [i["id"] for i in items]
    assert [r["reward"] for r in batch.results] == [
        (3.0 if i["id"] == "solo" else 1.0 if "yes" in i["response"] else 0.0) for i in items
    ]
    assert sorted(g["group_id"] for g in batch.groups) == [f"g{g}" for g in range(5)]
    assert all(g["size"] == 3 for g in batch.groups)


def test_async_split_requests_run_concurrently(server):
    async def main():
        async with AsyncRewardClient(server.url, max_batch_items=2, max_concurrency=3) as client:
            return await client.score([YES, OPEN] * 5)

    batch = asyncio.run(main())
    assert batch.requests == 5 and batch.rewards == [2.0, 3.0] * 5


def test_invalid_urls_and_values_fail_fast():
    with pytest.raises(ValueError):
        RewardClient("localhost:8000")
    with RewardClient("http://127.0.0.1:9") as client, pytest.raises(RewardClientError):
        client.score([{**YES, "ground_truth": float("nan")}])
