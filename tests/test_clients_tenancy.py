"""The core clients' tenancy and explain options (SPEC §14 explain, §15) against a real service with
two tables and per-job state: ``model``/``job``/``priority``/``deadline_seconds`` set on the client
and overridden per call, sent as top-level ``/score`` fields and as ``/get_reward`` query
parameters; ``explain=True`` as ``options.explain``; and the new families' results as they come."""

from __future__ import annotations

import asyncio
import json

import pytest
from mixed_reward_client import AsyncRewardClient, BadRequest, RewardClient, RewardClientError
from mixed_reward_client._samples import parsed_text, result_keys, sub_scores_of
from test_trainer_support import (
    JOB,
    MATH_RESPONSE,
    MATH_TRUTH,
    POLICY_B,
    TEMPORAL_RESPONSE,
    TEMPORAL_TRUTH,
    W_RESPONSE,
    W_TRUTH,
    direct_rewards,
    prompt_counts,
    prompt_missing,
    tenancy_server,
)

OPEN_W = {"response": W_RESPONSE, "ground_truth": W_TRUTH, "task_type": "open_ended"}
YES = {"response": "<think>t</think><answer>yes</answer>", "ground_truth": "yes", "task_type": "yes_no"}
MATH = {"response": MATH_RESPONSE, "ground_truth": MATH_TRUTH, "task_type": "math"}
TEMPORAL = {"response": TEMPORAL_RESPONSE, "ground_truth": TEMPORAL_TRUTH, "task_type": "temporal_grounding"}


@pytest.fixture(scope="module")
def tenant(default_table, tmp_path_factory):
    with tenancy_server(default_table, tmp_path_factory.mktemp("tenancy")) as srv:
        yield srv


def test_model_and_job_from_the_client_and_per_call(tenant):
    on_b = direct_rewards(tenant.url, [OPEN_W], model=POLICY_B)
    on_default = direct_rewards(tenant.url, [OPEN_W])
    assert on_b != on_default  # the item tells the tables apart
    with RewardClient(tenant.url, model=POLICY_B, job=JOB) as client:
        batch = client.score([OPEN_W, {**YES, "prompt_id": "t-1"}])
        assert batch.table["name"] == POLICY_B and batch.job == JOB
        assert batch.rewards == [on_b[0], 2.0]
        other = client.score([OPEN_W, {**YES, "prompt_id": "t-1"}], model="default", job="exp3")
        assert other.table["name"] == "default" and other.job == "exp3"
        assert other.rewards == [on_default[0], 2.0]
    assert prompt_counts(tenant.url, "t-1", job=JOB) == (1, 1)
    assert prompt_counts(tenant.url, "t-1", job="exp3") == (1, 1)
    assert prompt_missing(tenant.url, "t-1")  # the default job never saw it


def test_a_named_table_is_routable_by_a_ray_serve_proxy(tenant):
    """A Serve proxy routes by the ``serve_multiplexed_model_id`` header only (it reads no body):
    a call naming a table sends it, and ``?model=``, with the body's ``model``; a call without
    one sends neither, and the per-call model wins over the client's."""
    sent: list[tuple[str, str | None]] = []
    with RewardClient(tenant.url, model=POLICY_B) as client:
        client._http.event_hooks["request"].append(
            lambda request: sent.append((str(request.url), request.headers.get("serve_multiplexed_model_id"))))
        assert client.score([OPEN_W]).table["name"] == POLICY_B
        assert client.score([OPEN_W], model="default").table["name"] == "default"
    with RewardClient(tenant.url) as client:
        client._http.event_hooks["request"].append(
            lambda request: sent.append((str(request.url), request.headers.get("serve_multiplexed_model_id"))))
        assert client.score([OPEN_W]).table["name"] == "default"
    assert sent == [(f"{tenant.url}/score?model={POLICY_B}", POLICY_B), (f"{tenant.url}/score?model=default", "default"),
                    (f"{tenant.url}/score", None)]


def test_a_split_call_sends_its_tenancy_with_every_request(tenant):
    items = [{**YES, "prompt_id": "t-split"}] * 5 + [OPEN_W]
    with RewardClient(tenant.url, max_batch_items=2, model=POLICY_B, job="exp-split") as client:
        batch = client.score(items)
    assert batch.requests == 3 and batch.table["name"] == POLICY_B and batch.job == "exp-split"
    assert batch.rewards[-1] == direct_rewards(tenant.url, [OPEN_W], model=POLICY_B)[0]
    assert prompt_counts(tenant.url, "t-split", job="exp-split") == (5, 5)


def test_priority_and_deadline_are_sent(tenant):
    """The service does not echo them: a valid pair is accepted, an out-of-range one is a 422 naming
    the field, which only a request carrying it can get."""
    with RewardClient(tenant.url, priority=5, deadline_seconds=30.0) as client:
        assert client.score([YES]).rewards == [2.0]
        for kwargs, field in (({"priority": 5000}, "priority"), ({"deadline_seconds": 1e9}, "deadline_seconds")):
            with pytest.raises(BadRequest) as caught:
                client.score([YES], **kwargs)
            assert caught.value.status_code == 422 and caught.value.details[0]["field"] == field
    with pytest.raises(RewardClientError, match="priority must be an integer"):
        RewardClient(tenant.url, priority=True)  # type: ignore[arg-type]


def test_unknown_model_is_a_bad_request_listing_the_tables(tenant):
    with RewardClient(tenant.url, model="policy-z") as client, pytest.raises(BadRequest) as caught:
        client.score([YES])
    assert caught.value.error_type == "unknown_model" and POLICY_B in caught.value.message


def test_get_reward_sends_model_and_job_in_the_query(tenant):
    prompt = "Describe the picture."
    label = {"ground_truth": W_TRUTH, "task_type": "open_ended", "prompt_id": "t-orl"}
    expected = direct_rewards(tenant.url, [OPEN_W], model=POLICY_B)
    with RewardClient(tenant.url, model=POLICY_B, job=JOB) as client:
        answer = client.get_reward([prompt + W_RESPONSE], [prompt], [label])
        assert answer["rewards"] == expected
        default = client.get_reward([prompt + W_RESPONSE], [prompt], [label], model="default", job="exp3")
        assert default["rewards"] == direct_rewards(tenant.url, [OPEN_W])
        with pytest.raises(BadRequest) as caught:
            client.get_reward([prompt + W_RESPONSE], [prompt], [label], priority=5000)
        assert caught.value.details[0]["field"] == "priority"
    assert prompt_counts(tenant.url, "t-orl", job=JOB)[0] == 1
    assert prompt_counts(tenant.url, "t-orl", job="exp3")[0] == 1


def test_async_client_sends_the_same(tenant):
    async def main():
        async with AsyncRewardClient(tenant.url, model=POLICY_B, job=JOB, explain=True) as client:
            batch = await client.score([OPEN_W, YES])
            plain = await client.score([YES], explain=False, job="exp3")
            reward = await client.get_reward(["P" + W_RESPONSE], ["P"], [{"answer": W_TRUTH, "task_type": "caption"}])
        return batch, plain, reward

    batch, plain, reward = asyncio.run(main())
    assert batch.table["name"] == POLICY_B and batch.job == JOB and plain.job == "exp3"
    assert [r["parsed"] for r in batch.results][1] == "yes" and "parsed" not in plain.results[0]
    assert reward["rewards"] == direct_rewards(tenant.url, [OPEN_W], model=POLICY_B)


# The math items below go to the module's own server, not the session's: a math item starts the
# server's pool of verification workers, whose manager thread keeps polling with time.sleep until
# the server stops, and tests/test_offline_remote.py patches time.sleep for the whole process.


def test_explain_adds_what_each_rule_read(tenant):
    items = [YES, {**YES, "response": "<answer>maybe</answer>"}, MATH, TEMPORAL,
             {"response": "<answer>a cat on a mat</answer>", "ground_truth": "a dog on a mat", "task_type": "caption"}]
    with RewardClient(tenant.url) as client:
        plain = client.score(items)
        explained = client.score(items, explain=True)
    with RewardClient(tenant.url, explain=True) as client:
        assert client.score(items).results == explained.results
    assert all("parsed" not in r for r in plain.results)
    assert explained.rewards == plain.rewards  # explaining never changes a number
    parsed = [r["parsed"] for r in explained.results]
    assert parsed[:4] == ["yes", None, "0.5", [[2.0, 6.0]]]
    weakest = parsed[4]
    assert weakest[0]["token"] == "cat" and all(set(t) == {"token", "similarity"} for t in weakest)
    assert [parsed_text(r) for r in explained.results[:4]] == ["yes", "", "0.5", "[[2.0,6.0]]"]
    assert json.loads(parsed_text(explained.results[4])) == weakest


def test_new_families_results_and_the_shared_result_keys(tenant):
    with RewardClient(tenant.url) as client:
        batch = client.score([MATH, TEMPORAL, YES])
    math_row, temporal_row, yes_row = batch.results
    assert (math_row["reward"], math_row["accuracy"], math_row["format"]) == (2.0, 1.0, 1.0)
    assert (temporal_row["accuracy"], temporal_row["tiou"], temporal_row["boundary_penalty"]) == (1.0, 1.0, 1.0)
    assert sub_scores_of(temporal_row) == {"tiou": 1.0, "boundary_penalty": 1.0}
    assert sub_scores_of(math_row) == {} and sub_scores_of(yes_row) == {}
    keys = [result_keys(r) for r in batch.results]
    assert all(set(k) == {"reward", "accuracy", "format", "task_type", "bmas_forward", "bmas_backward",
                          "timed_out", "sub_scores", "parsed"} for k in keys)
    assert [k["task_type"] for k in keys] == ["math", "temporal_grounding", "yes_no"]
    assert [k["timed_out"] for k in keys] == [False, False, False]
    assert keys[1]["sub_scores"] == {"tiou": 1.0, "boundary_penalty": 1.0} and keys[1]["bmas_forward"] is None
    assert result_keys({**math_row, "timed_out": True})["timed_out"] is True
