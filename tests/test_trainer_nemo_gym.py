"""NeMo Gym 0.7: ``mixed_reward_client.nemo_gym.MixedRewardResourcesServer`` as NeMo Gym runs it
(its own ``setup_webserver`` app under uvicorn), driven with NeMo Gym's own client code: the
``ServerClient.post(server_name, "/verify", json=...)`` call its ``simple_agent`` makes, with the
payload that agent builds (``body.model_dump() | {"response": model_response_json}``), against
the real reward server.

nemo-gym 0.7.0 declares Python >= 3.13.14; it imports and runs on 3.11, where these tests
install it with ``--no-deps --ignore-requires-python`` (tests/requirements-clients.txt)."""

from __future__ import annotations

import asyncio
import json
import socket

import httpx
import pytest
from serving import running_server, serve_app
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

nemo_gym_server = pytest.importorskip("mixed_reward_client.nemo_gym", reason="nemo-gym not installed",
                                      exc_type=ImportError)
from mixed_reward_client.nemo_gym import (
    MixedRewardResourcesServer,
    MixedRewardResourcesServerConfig,
    MixedRewardVerifyResponse,
)
from nemo_gym.config_types import BaseServerConfig
from nemo_gym.server_utils import (
    GlobalAIOHTTPAsyncClientConfig,
    ServerClient,
    get_response_json,
    global_aiohttp_client_exit,
    set_global_aiohttp_client,
)
from omegaconf import OmegaConf

THINK = "<think>I see whiskers.</think>"
# (assistant text, row fields, expected reward)
SAMPLES = [
    (THINK + "<answer>yes</answer>", {"ground_truth": "yes", "task_type": "yes_no"}, 2.0),
    (THINK + "<answer>no</answer>", {"answer": "yes", "task_type": "yes_no"}, 1.0),
    (THINK + "<answer>(B) 3 cm</answer>", {"solution": "B", "task_type": "mcq"}, 2.0),
    (THINK + "<answer>[10, 10, 50, 50]</answer>", {"ground_truth": [10, 10, 50, 50], "task_type": "grounding"}, 2.0),
    (THINK + "<answer>a cat on a mat</answer>", {"ground_truth": "a cat on a mat", "task_type": "open_ended"}, 3.0),
]
NAME = "mixed_reward"


def dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def global_config(url: str):
    host, port = url.removeprefix("http://").split(":")
    return OmegaConf.create({NAME: {"resources_servers": {NAME: {"host": host, "port": int(port), "entrypoint": "app.py",
                                                                 "domain": "other"}}}})


def resources_app(**config):
    """The FastAPI app NeMo Gym's run_webserver would serve for this resources server."""
    cfg = MixedRewardResourcesServerConfig(host="127.0.0.1", port=0, entrypoint="app.py", name=NAME, **config)
    client = ServerClient(head_server_config=BaseServerConfig(host="127.0.0.1", port=0),
                          global_config_dict=OmegaConf.create({}))
    return MixedRewardResourcesServer(config=cfg, server_client=client).setup_webserver()


def assistant_response(text: str) -> dict:
    """A Responses-API response as a NeMo Gym model server returns it (the shape of NeMo Gym's own tests)."""
    return {
        "id": "resp_1", "created_at": 0.0, "model": "policy", "object": "response", "parallel_tool_calls": True,
        "tool_choice": "auto", "tools": [],
        "output": [{"id": "msg_1", "role": "assistant", "status": "completed", "type": "message",
                    "content": [{"annotations": [], "text": text, "type": "output_text"}]}],
    }


def verify_payload(text: str, fields: dict) -> dict:
    run_body = {"responses_create_params": {"input": [{"role": "user", "content": "Is there a cat?"}]}, **fields}
    return run_body | {"response": assistant_response(text)}  # simple_agent's verify payload


def verify_all(url: str, payloads: list[dict]) -> list[tuple[int, dict]]:
    """POST /verify for every payload concurrently, with NeMo Gym's ServerClient."""

    async def main():
        session = set_global_aiohttp_client(GlobalAIOHTTPAsyncClientConfig())
        client = ServerClient(head_server_config=BaseServerConfig(host="127.0.0.1", port=0),
                              global_config_dict=global_config(url))
        try:
            async def one(payload):
                response = await client.post(server_name=NAME, url_path="/verify", json=payload)
                if response.status != 200:  # the agent's raise_for_status fails the rollout here
                    return response.status, (await response.read()).decode()
                return response.status, await get_response_json(response)

            return await asyncio.gather(*(one(p) for p in payloads))
        finally:
            await session.close()

    try:
        return asyncio.run(main())
    finally:
        global_aiohttp_client_exit()  # NeMo Gym's own reset (the session is closed already)


@pytest.fixture(scope="module")
def resources_url(server):
    with serve_app(resources_app(reward_url=server.url, flush_ms=50)) as url:
        yield url


def test_verify_scores_each_rollout(resources_url, server):
    answers = verify_all(resources_url, [verify_payload(t, f) for t, f, _ in SAMPLES * 3])
    assert [status for status, _ in answers] == [200] * 15
    replies = [MixedRewardVerifyResponse.model_validate(body) for _, body in answers]
    assert [r.reward for r in replies] == [s[2] for s in SAMPLES] * 3
    for r in replies:
        assert set(r.reward_components) == {"accuracy", "format"}
        assert sum(r.reward_components.values()) == r.reward
        assert r.reward_components == {"accuracy": r.accuracy, "format": r.format}  # format_weight 1
    assert [r.bmas_forward is None for r in replies[:5]] == [True] * 4 + [False]
    assert replies[4].accuracy == pytest.approx(replies[4].bmas_forward + replies[4].bmas_backward)
    assert replies[0].responses_create_params.input[0].content == "Is there a cat?"  # the rollout, returned


def test_same_rewards_as_score(resources_url, server):
    answers = verify_all(resources_url, [verify_payload(t, f) for t, f, _ in SAMPLES])
    items = [{"response": t, "ground_truth": next(f[k] for k in ("ground_truth", "answer", "solution") if k in f),
              "task_type": f["task_type"]} for t, f, _ in SAMPLES]
    direct = httpx.post(server.url + "/score", json={"items": items}, timeout=30).json()
    assert [body["reward"] for _, body in answers] == [row["reward"] for row in direct["results"]]


def test_components_sum_with_another_format_weight(server):
    with serve_app(resources_app(reward_url=server.url, format_weight=0.25)) as url:
        (status, body), = verify_all(url, [verify_payload(*SAMPLES[0][:2])])
    assert status == 200 and body["reward"] == 1.25
    assert body["reward_components"] == {"accuracy": 1.0, "format": 0.25}


def test_row_without_ground_truth_is_a_422_listing_the_fields_it_has(resources_url):
    """The message lists the fields the row has, not the ground-truth fields the request model
    declares and the row lacks (issue #20 item 7)."""
    (status, body), = verify_all(resources_url, [verify_payload("<answer>yes</answer>", {"task_type": "yes_no"})])
    assert status == 422
    assert json.loads(body) == {"detail": "the verify request has no ground truth: it needs one of "
                                          "['ground_truth', 'answer', 'solution']; it has "
                                          "['response', 'responses_create_params', 'task_type']"}
    (status, body), = verify_all(resources_url, [verify_payload("<answer>yes</answer>",
                                                                {"ground_truth": None, "prompt_id": "p"})])
    assert status == 422
    assert json.loads(body)["detail"].endswith("it has ['prompt_id', 'response', 'responses_create_params']; "
                                               "ground_truth is null")


def test_service_down_fails_the_verify_unless_configured():
    payload = [verify_payload(*SAMPLES[0][:2])]
    with serve_app(resources_app(reward_url=dead_url(), format_weight=1.0, max_attempts=1)) as url:
        (status, _), = verify_all(url, payload)
    assert status == 500  # NeMo Gym's agent raises for it: the rollout fails, it is not scored 0
    with serve_app(resources_app(reward_url=dead_url(), format_weight=1.0, max_attempts=1, on_failure="mask")) as url:
        (status, body), = verify_all(url, payload)
    assert status == 200 and body["mask_sample"] is True and body["failure_kind"] == "judge_failed"
    assert "reward service unavailable" in body["failure_reason"]


def test_row_prompt_id_reaches_the_posterior(default_table, tmp_path):
    """A dataset row's `prompt_id` field rides in simple_agent's verify payload (its run request keeps
    a row's extra fields) and reaches the service's posterior."""
    plan = {"ng-a": [("yes", True), ("no", False), ("yes", True)], 3: [("no", False), ("no", False)]}
    payloads = [verify_payload(THINK + f"<answer>{answer}</answer>",
                               {"ground_truth": "yes", "task_type": "yes_no", "prompt_id": pid})
                for pid, rollouts in plan.items() for answer, _ in rollouts]
    with running_server(default_table, state_path=str(tmp_path / "state.db")) as srv:
        with serve_app(resources_app(reward_url=srv.url, flush_ms=50)) as url:
            assert [status for status, _ in verify_all(url, payloads)] == [200] * len(payloads)
        for pid, rollouts in plan.items():
            assert prompt_counts(srv.url, str(pid)) == (len(rollouts), sum(ok for _, ok in rollouts))


FAMILIES = [  # (assistant text, row fields, expected reward)
    (MATH_RESPONSE, {"ground_truth": MATH_TRUTH, "task_type": "math"}, 2.0),
    (TEMPORAL_RESPONSE, {"answer": TEMPORAL_TRUTH, "task_type": "temporal_grounding"}, 2.0),
    (THINK + "<answer>from 4 to 8 seconds</answer>", {"solution": TEMPORAL_TRUTH, "task_type": "tvg"}, 1 + 2 / 6),
]


def test_math_and_temporal_rollouts_carry_their_sub_scores(resources_url):
    answers = verify_all(resources_url, [verify_payload(t, f) for t, f, _ in FAMILIES])
    assert [status for status, _ in answers] == [200] * 3
    bodies = [body for _, body in answers]
    assert [b["reward"] for b in bodies] == pytest.approx([s[2] for s in FAMILIES])
    assert [b["task_type"] for b in bodies] == ["math", "temporal_grounding", "temporal_grounding"]
    assert "tiou" not in bodies[0] and bodies[0]["timed_out"] is False and bodies[0]["parsed"] is None
    assert (bodies[1]["tiou"], bodies[1]["boundary_penalty"]) == (1.0, 1.0)
    assert bodies[2]["tiou"] == pytest.approx(2 / 6) and bodies[2]["accuracy"] == pytest.approx(2 / 6)
    assert all(b["reward_components"] == {"accuracy": b["accuracy"], "format": 1.0} for b in bodies)
    reply = MixedRewardVerifyResponse.model_validate(bodies[1])
    assert reply.model_extra == {"tiou": 1.0, "boundary_penalty": 1.0}

    # NeMo Gym's /aggregate_metrics on this resources server profiles the top-level numbers: the
    # sub-scores too, over the rollouts that carry them.
    rows = [{**b, "_ng_task_index": i, "_ng_rollout_index": 0} for i, b in enumerate(bodies)]
    metrics = httpx.post(resources_url + "/aggregate_metrics", json={"verify_responses": rows}, timeout=30).json()
    agent = metrics["agent_metrics"]
    assert agent["mean/tiou"] == pytest.approx((1.0 + 2 / 6) / 2)
    assert agent["mean/timed_out"] == 0.0 and agent["mean/accuracy"] == pytest.approx((2 + 2 / 6) / 3)


def test_explain_adds_what_the_rule_read(server):
    with serve_app(resources_app(reward_url=server.url, explain=True)) as url:
        answers = verify_all(url, [verify_payload(t, f) for t, f, _ in FAMILIES[:2]] +
                             [verify_payload("<answer>maybe</answer>", {"answer": "yes", "task_type": "yes_no"})])
    assert [body["parsed"] for _, body in answers] == ["0.5", [[2.0, 6.0]], None]


def test_model_and_job_from_the_config(default_table, tmp_path):
    payloads = [verify_payload(W_RESPONSE, {"ground_truth": W_TRUTH, "task_type": "open_ended"}),
                verify_payload(THINK + "<answer>yes</answer>", {"answer": "yes", "task_type": "yes_no", "prompt_id": "n"}),
                verify_payload(THINK + "<answer>no</answer>", {"answer": "yes", "task_type": "yes_no", "prompt_id": "n"})]
    item = {"response": W_RESPONSE, "ground_truth": W_TRUTH, "task_type": "open_ended"}
    with tenancy_server(default_table, tmp_path) as srv:
        with serve_app(resources_app(reward_url=srv.url, model=POLICY_B, job=JOB, flush_ms=50)) as url:
            answers = verify_all(url, payloads)
        on_b = direct_rewards(srv.url, [item], model=POLICY_B)[0]
        assert [body["reward"] for _, body in answers] == [on_b, 2.0, 1.0]
        assert on_b != direct_rewards(srv.url, [item])[0]
        assert prompt_counts(srv.url, "n", job=JOB) == (2, 1) and prompt_missing(srv.url, "n")
