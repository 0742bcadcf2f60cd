"""AReaL 1.0: its RLVR workflow (``areal.workflow.rlvr.RLVRWorkflow``) scoring through
``mixed_reward_client.areal``, against the real server. Only the inference engine is replaced, by
one that "generates" fixed token ids; the workflow decodes them with special tokens kept, as
AReaL does, and calls the reward through its own ``AsyncRewardWrapper`` (a process pool with a
15 s timeout) or, for ``AsyncMixedReward``, on the rollout event loop."""

from __future__ import annotations

import asyncio
import socket

import httpx
import mixed_reward_client._config as client_config
import pytest
from mixed_reward_client import RewardClientError, ServerUnavailable
from mixed_reward_client._coalesce import Coalescer
from mixed_reward_client.areal import AsyncMixedReward
from serving import running_server
from test_trainer_support import (
    JOB,
    MATH_RESPONSE,
    MATH_TRUTH,
    POLICY_B,
    TEMPORAL_RESPONSE,
    TEMPORAL_TRUTH,
    W_RESPONSE,
    W_TRUTH,
    byte_tokenizer,
    direct_rewards,
    prompt_counts,
    prompt_missing,
    tenancy_server,
)

pytest.importorskip("torch")
rlvr = pytest.importorskip("areal.workflow.rlvr", reason="areal not installed (pip install --no-deps areal)")
from areal.api import ModelResponse
from areal.api.cli_args import GenerationHyperparameters
from areal.api.reward_api import AsyncRewardWrapper
from areal.utils import stats_tracker

THINK = "<think>look</think>"
# (response, row fields, expected reward)
SAMPLES = [
    (THINK + "<answer>yes</answer>", {"answer": "yes", "task_type": "yes_no"}, 2.0),
    ("<answer>no</answer>", {"answer": "yes", "task_type": "yes_no"}, 0.0),
    (THINK + "<answer>(B) 3 cm</answer>", {"ground_truth": "B", "task_type": "mcq"}, 2.0),
    (THINK + "<answer>12,000</answer>", {"solution": 12000, "task_type": "chart"}, 2.0),
    (THINK + "<answer>[10, 10, 50, 50]</answer>", {"answer": [10, 10, 50, 50], "task_type": "grounding"}, 2.0),
    (THINK + "<answer>a cat on a mat</answer>", {"answer": "a cat on a mat", "task_type": "open_ended"}, 3.0),
]


def dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


class FixedEngine:
    """AReaL's InferenceEngine.agenerate, answering each prompt with its fixed response + EOS."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.tok = byte_tokenizer()
        self.answers = answers

    async def agenerate(self, req):
        prompt = self.tok.decode(req.input_ids)
        text = next(answer for question, answer in self.answers.items() if question in prompt)
        out = self.tok(text, add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id]
        return ModelResponse(input_tokens=list(req.input_ids), output_tokens=out, output_logprobs=[0.0] * len(out),
                             output_versions=[0] * len(out), tokenizer=self.tok)


def episodes(samples, repeat: int = 1):
    """(engine, dataset rows): row i asks question i, whose fixed answer is sample i's response."""
    rows, answers = [], {}
    for index, (response, fields, _) in enumerate(samples * repeat):
        question = f"Question {index}?"
        answers[question] = response
        rows.append({"messages": [{"role": "user", "content": question}], **fields})
    return FixedEngine(answers), rows


def workflow(reward_fn):
    gconfig = GenerationHyperparameters(n_samples=1, max_new_tokens=64)
    return rlvr.RLVRWorkflow(reward_fn=reward_fn, gconfig=gconfig, tokenizer=byte_tokenizer())


async def run_episodes(wf, engine, rows) -> list[float]:
    results = await asyncio.gather(*(wf.arun_episode(engine, row) for row in rows))
    return [float(r["rewards"][0]) for r in results]


@pytest.fixture
def fresh_pool():
    """AReaL shares its reward process pools across wrappers; workers fork with the environment
    of their first use, so each test starts and ends without one."""
    AsyncRewardWrapper._atexit_shutdown_all()
    yield
    AsyncRewardWrapper._atexit_shutdown_all()


def test_reward_fn_through_areal_s_process_pool(server, monkeypatch, fresh_pool):
    monkeypatch.setenv("MIXED_REWARD_URL", server.url)
    engine, rows = episodes(SAMPLES)
    wf = workflow("mixed_reward_client.areal.reward_fn")  # loaded by AReaL's import_from_string
    rewards = asyncio.run(run_episodes(wf, engine, rows))
    assert rewards == [s[2] for s in SAMPLES]  # the <|im_end|> AReaL decodes is not held against format
    assert wf.async_reward_fn.timeout_seconds == 15


def test_reward_fn_matches_score(server, monkeypatch, fresh_pool):
    monkeypatch.setenv("MIXED_REWARD_URL", server.url)
    engine, rows = episodes(SAMPLES)
    rewards = asyncio.run(run_episodes(workflow("mixed_reward_client.areal.reward_fn"), engine, rows))
    items = [{"response": r, "ground_truth": next(f[k] for k in ("ground_truth", "answer", "solution") if k in f),
              "task_type": f["task_type"]} for r, f, _ in SAMPLES]
    direct = httpx.post(server.url + "/score", json={"items": items}, timeout=30).json()
    assert rewards == [row["reward"] for row in direct["results"]]


def test_reward_fn_dead_service_raises_in_areal_s_wrapper_not_zero(monkeypatch, fresh_pool):
    monkeypatch.setenv("MIXED_REWARD_URL", dead_url())
    monkeypatch.setenv("MIXED_REWARD_MAX_ATTEMPTS", "2")
    engine, rows = episodes(SAMPLES[:1])
    with pytest.raises(ServerUnavailable, match="2 attempts"):  # pickled back from the worker process
        asyncio.run(run_episodes(workflow("mixed_reward_client.areal.reward_fn"), engine, rows))


def test_reward_fn_hanging_service_fails_before_areal_s_timeout_scores_zero(monkeypatch, fresh_pool):
    """A service that accepts and never answers: AReaL's wrapper would return 0 after 15 s; the
    deadline makes the call fail first, so AReaL raises."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        monkeypatch.setenv("MIXED_REWARD_URL", f"http://127.0.0.1:{sock.getsockname()[1]}")
        monkeypatch.setenv("MIXED_REWARD_DEADLINE", "0.5")
        engine, rows = episodes(SAMPLES[:1])
        with pytest.raises(ServerUnavailable, match="deadline of 0.5s"):
            asyncio.run(run_episodes(workflow("mixed_reward_client.areal.reward_fn"), engine, rows))


def test_reward_fn_zero_only_when_asked(monkeypatch, fresh_pool):
    monkeypatch.setenv("MIXED_REWARD_URL", dead_url())
    monkeypatch.setenv("MIXED_REWARD_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("MIXED_REWARD_ON_FAILURE", "zero")
    engine, rows = episodes(SAMPLES[:1])
    assert asyncio.run(run_episodes(workflow("mixed_reward_client.areal.reward_fn"), engine, rows)) == [0.0]


def test_async_mixed_reward_coalesces_concurrent_episodes(server):
    stats_tracker.export_all(reset=True)
    engine, rows = episodes(SAMPLES, repeat=4)
    reward = AsyncMixedReward(server.url, flush_ms=50)

    async def main():
        wf = workflow(lambda *a, **k: 0.0)
        wf.async_reward_fn = reward  # the one line of user code
        rewards = await run_episodes(wf, engine, rows)
        coalescers = [c for c in client_config._PER_LOOP[asyncio.get_running_loop()].values()
                      if isinstance(c, Coalescer)]
        return rewards, sum(c.requests for c in coalescers)

    rewards, requests = asyncio.run(main())
    assert rewards == [s[2] for s in SAMPLES] * 4
    assert 1 <= requests <= 4  # 24 concurrent episodes, a few POST /score
    stats = stats_tracker.export_all(reset=True)  # what AReaL logs after the rollout step
    assert stats["rollout/reward"] == pytest.approx(sum(s[2] for s in SAMPLES) / len(SAMPLES))
    assert stats["rollout/mixed_reward/accuracy"] == pytest.approx((1 + 0 + 1 + 1 + 1 + 2) / 6)
    assert stats["rollout/mixed_reward/format"] == pytest.approx(5 / 6)


def test_async_mixed_reward_raises_unless_zero_asked():
    engine, rows = episodes(SAMPLES[:2])

    async def run(reward):
        wf = workflow(lambda *a, **k: 0.0)
        wf.async_reward_fn = reward
        return await run_episodes(wf, engine, rows)

    with pytest.raises(ServerUnavailable):
        asyncio.run(run(AsyncMixedReward(dead_url(), max_attempts=1)))
    assert asyncio.run(run(AsyncMixedReward(dead_url(), max_attempts=1, on_failure="zero"))) == [0.0, 0.0]


def test_row_prompt_id_reaches_the_posterior(default_table, tmp_path, monkeypatch, fresh_pool):
    """A dataset row's `prompt_id` (in AReaL's `**data`, next to the `prompt_ids` token ids) reaches
    the service's posterior, through the process-pool `reward_fn` and through AsyncMixedReward."""
    yes, no = (THINK + "<answer>yes</answer>", True), ("<answer>no</answer>", False)
    plan = {"pool": [yes, yes, no], 5: [no, yes], "async": [yes, no, no, yes]}  # id -> [(response, correct)]

    def samples(*ids):
        row = {"answer": "yes", "task_type": "yes_no"}
        return [(r, {**row, "prompt_id": pid}, 0.0) for pid in ids for r, _ in plan[pid]]

    with running_server(default_table, state_path=str(tmp_path / "state.db")) as srv:
        monkeypatch.setenv("MIXED_REWARD_URL", srv.url)
        engine, rows = episodes(samples("pool", 5))
        asyncio.run(run_episodes(workflow("mixed_reward_client.areal.reward_fn"), engine, rows))

        async def coalesced():
            wf = workflow(lambda *a, **k: 0.0)
            wf.async_reward_fn = AsyncMixedReward(srv.url)
            return await run_episodes(wf, *episodes(samples("async")))

        asyncio.run(coalesced())
        for pid, rollouts in plan.items():
            assert prompt_counts(srv.url, str(pid)) == (len(rollouts), sum(ok for _, ok in rollouts))


def test_row_without_ground_truth_names_the_fields(server):
    reward = AsyncMixedReward(server.url)
    with pytest.raises(RewardClientError, match=r"ground_truth.*it has \['messages', 'task_type'\]"):
        asyncio.run(reward("p", "<answer>yes</answer>", [], [], messages=[], task_type="yes_no"))


FAMILIES = [  # (response, row fields, expected reward)
    (MATH_RESPONSE, {"answer": MATH_TRUTH, "task_type": "math"}, 2.0),
    (TEMPORAL_RESPONSE, {"ground_truth": TEMPORAL_TRUTH, "task_type": "temporal_grounding"}, 2.0),
    (THINK + "<answer>[4, 8]</answer>", {"solution": TEMPORAL_TRUTH, "task_type": "tiou"}, 1 + 2 / 6),
]


def test_math_and_temporal_rows_through_both_forms(server, monkeypatch, fresh_pool):
    monkeypatch.setenv("MIXED_REWARD_URL", server.url)
    engine, rows = episodes(FAMILIES)
    pooled = asyncio.run(run_episodes(workflow("mixed_reward_client.areal.reward_fn"), engine, rows))
    assert pooled == pytest.approx([s[2] for s in FAMILIES])
    stats_tracker.export_all(reset=True)

    async def coalesced():
        wf = workflow(lambda *a, **k: 0.0)
        wf.async_reward_fn = AsyncMixedReward(server.url)
        return await run_episodes(wf, engine, rows)

    assert asyncio.run(coalesced()) == pooled
    stats = stats_tracker.export_all(reset=True)
    assert stats["rollout/mixed_reward/accuracy"] == pytest.approx((1 + 1 + 2 / 6) / 3)


def test_model_and_job_through_both_forms(default_table, tmp_path, monkeypatch, fresh_pool):
    """``AsyncMixedReward(model=..., job=...)`` and, for the process-pool ``reward_fn``,
    ``MIXED_REWARD_MODEL``/``MIXED_REWARD_JOB``: the table that scores, the job that learns."""
    samples = [(W_RESPONSE, {"answer": W_TRUTH, "task_type": "open_ended"}, 0.0),
               (THINK + "<answer>yes</answer>", {"answer": "yes", "task_type": "yes_no", "prompt_id": "ar"}, 0.0),
               ("<answer>no</answer>", {"answer": "yes", "task_type": "yes_no", "prompt_id": "ar"}, 0.0)]
    item = {"response": W_RESPONSE, "ground_truth": W_TRUTH, "task_type": "open_ended"}
    with tenancy_server(default_table, tmp_path) as srv:
        on_b = direct_rewards(srv.url, [item], model=POLICY_B)[0]
        assert abs(on_b - direct_rewards(srv.url, [item])[0]) > 1e-3
        engine, rows = episodes(samples)

        async def coalesced():
            wf = workflow(lambda *a, **k: 0.0)
            wf.async_reward_fn = AsyncMixedReward(srv.url, model=POLICY_B, job=JOB)
            return await run_episodes(wf, engine, rows)

        # AReaL keeps rewards in a float32 tensor
        assert asyncio.run(coalesced()) == pytest.approx([on_b, 2.0, 0.0], abs=1e-6)
        assert prompt_counts(srv.url, "ar", job=JOB) == (2, 1)

        for name, value in (("MIXED_REWARD_URL", srv.url), ("MIXED_REWARD_MODEL", POLICY_B),
                            ("MIXED_REWARD_JOB", "exp-pool")):
            monkeypatch.setenv(name, value)
        pooled = asyncio.run(run_episodes(workflow("mixed_reward_client.areal.reward_fn"), engine, rows))
        assert pooled == pytest.approx([on_b, 2.0, 0.0], abs=1e-6)
        assert prompt_counts(srv.url, "ar", job="exp-pool") == (2, 1) and prompt_missing(srv.url, "ar")


def test_explain_is_refused_not_ignored():
    with pytest.raises(ValueError, match="explain has nowhere to go"):
        AsyncMixedReward("http://127.0.0.1:9", explain=True)
