"""verifiers 0.4 (prime-rl's environments): ``Task.score`` - verifiers' own scoring of a finished
rollout - with ``mixed_reward_client.verifiers`` plugged in as a task reward by import path (the
``--env.taskset.task.rewards.<name>.fn`` config) or returned from a ``@vf.reward`` method,
against the real server. Traces are built as a rollout leaves them: a user node and a sampled
assistant node."""

from __future__ import annotations

import asyncio
import socket

import httpx
import mixed_reward_client._config as client_config
import pytest
from mixed_reward_client import ServerUnavailable
from mixed_reward_client._coalesce import Coalescer
from mixed_reward_client.verifiers import mixed_reward_func
from serving import running_server
from test_trainer_support import (
    JOB,
    MATH_RESPONSE,
    MATH_TRUTH,
    POLICY_B,
    TEMPORAL_RESPONSE,
    W_RESPONSE,
    W_TRUTH,
    direct_rewards,
    prompt_counts,
    prompt_missing,
    tenancy_server,
)

vf = pytest.importorskip("verifiers.v1", reason="verifiers not installed")
from verifiers.v1.graph import MessageNode
from verifiers.v1.types import AssistantMessage, UserMessage

THINK = "<think>look</think>"
# (reply, ground truth, task type, expected reward)
SAMPLES = [
    (THINK + "<answer>yes</answer>", "yes", "yes_no", 2.0),
    (THINK + "<answer>no</answer>", "yes", "yes_no", 1.0),
    (THINK + "<answer>(B) 3 cm</answer>", "B", "mcq", 2.0),
    (THINK + "<answer>[10, 10, 50, 50]</answer>", "[10, 10, 50, 50]", "grounding", 2.0),
    (THINK + "<answer>a cat on a mat</answer>", "a cat on a mat", "open_ended", 3.0),
]
PLUGGED = {"mixed_reward": vf.RewardFunctionConfig(fn="mixed_reward_client.verifiers:mixed_reward")}


class CatData(vf.TaskData):
    ground_truth: str
    task_type: str
    prompt_id: str | int | None = None


class CatTask(vf.Task[CatData]):
    """A task with no reward of its own: the config plugs one in."""


def dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def rollout(task: vf.Task, reply: str) -> vf.Trace:
    return vf.Trace(
        task=vf.TraceTask(type=type(task).__name__, data=task.data),
        agent=vf.AgentInfo(config=vf.AgentConfig()),
        nodes=[MessageNode(message=UserMessage(content=task.data.prompt)),
               MessageNode(parent=0, message=AssistantMessage(content=reply), sampled=True)],
    )


def score_all(tasks_and_replies) -> tuple[list[vf.Trace], int]:
    async def main():
        traces = [rollout(task, reply) for task, reply in tasks_and_replies]
        await asyncio.gather(*(task.score(trace) for (task, _), trace in zip(tasks_and_replies, traces)))
        coalescers = [c for c in client_config._PER_LOOP[asyncio.get_running_loop()].values()
                      if isinstance(c, Coalescer)]
        return traces, sum(c.requests for c in coalescers)

    return asyncio.run(main())


def plugged_tasks(samples, repeat: int = 1):
    config = vf.TaskConfig(rewards=PLUGGED)
    return [(CatTask(CatData(prompt="Is there a cat?", ground_truth=gt, task_type=tt), config), reply)
            for reply, gt, tt, _ in samples * repeat]


def test_plugged_reward_scores_every_trace(server, monkeypatch):
    monkeypatch.setenv("MIXED_REWARD_URL", server.url)
    traces, requests = score_all(plugged_tasks(SAMPLES, repeat=4))
    assert [t.reward for t in traces] == [s[3] for s in SAMPLES] * 4
    assert all(set(t.rewards) == {"mixed_reward"} for t in traces)
    assert all(set(t.metrics) == {"mixed_reward/accuracy", "mixed_reward/format"} for t in traces)
    assert [t.metrics["mixed_reward/accuracy"] for t in traces[:5]] == pytest.approx([1.0, 0.0, 1.0, 1.0, 2.0])
    assert 1 <= requests <= 4  # 20 concurrent Task.score calls, a few POST /score


def test_same_rewards_as_score(server, monkeypatch):
    monkeypatch.setenv("MIXED_REWARD_URL", server.url)
    traces, _ = score_all(plugged_tasks(SAMPLES))
    items = [{"response": r, "ground_truth": gt, "task_type": tt} for r, gt, tt, _ in SAMPLES]
    direct = httpx.post(server.url + "/score", json={"items": items}, timeout=30).json()
    assert [t.reward for t in traces] == [row["reward"] for row in direct["results"]]


def test_reward_method_with_options(server):
    reward = mixed_reward_func(server.url, format_weight=0.5, task_type="yes_no")

    class YesNoData(vf.TaskData):
        answer: str

    class YesNoTask(vf.Task[YesNoData]):
        @vf.reward(weight=1.0)
        async def mixed(self, task, trace) -> float:
            return await reward(task, trace)

    task = YesNoTask(YesNoData(prompt="Is there a cat?", answer="yes"))
    (trace,), _ = score_all([(task, THINK + "<answer>yes</answer>")])
    assert trace.reward == 1.5 and trace.metrics == {"mixed_reward/accuracy": 1.0, "mixed_reward/format": 1.0}


def test_service_down_is_a_task_error_not_zero(monkeypatch):
    monkeypatch.setenv("MIXED_REWARD_URL", dead_url())
    monkeypatch.setenv("MIXED_REWARD_MAX_ATTEMPTS", "1")
    with pytest.raises(vf.TaskError) as caught:
        score_all(plugged_tasks(SAMPLES[:1]))
    assert isinstance(caught.value.__cause__, ServerUnavailable)


def test_zero_only_when_asked(server):
    reward = mixed_reward_func(dead_url(), max_attempts=1, on_failure="zero")

    class ZeroTask(vf.Task[CatData]):
        @vf.reward
        async def mixed(self, task, trace) -> float:
            return await reward(task, trace)

    (trace,), _ = score_all([(ZeroTask(CatData(prompt="Q", ground_truth="yes", task_type="yes_no")), "x")])
    assert trace.reward == 0.0 and trace.metrics == {"mixed_reward/accuracy": 0.0, "mixed_reward/format": 0.0}


def test_task_prompt_id_reaches_the_posterior(default_table, tmp_path, monkeypatch):
    """A `prompt_id` task-data field, with the reward plugged by import path: verifiers' Task.score
    sends it and the service's posterior counts each prompt's rollouts."""
    plan = {"vf-a": [("yes", True), ("yes", True), ("no", False)], 8: [("no", False), ("yes", True)]}
    config = vf.TaskConfig(rewards=PLUGGED)
    data = {"prompt": "Is there a cat?", "ground_truth": "yes", "task_type": "yes_no"}
    tasks = [(CatTask(CatData(**data, prompt_id=pid), config), THINK + f"<answer>{answer}</answer>")
             for pid, rollouts in plan.items() for answer, _ in rollouts]
    with running_server(default_table, state_path=str(tmp_path / "state.db")) as srv:
        monkeypatch.setenv("MIXED_REWARD_URL", srv.url)
        traces, _ = score_all(tasks)
        assert all(t.rewards for t in traces)
        for pid, rollouts in plan.items():
            assert prompt_counts(srv.url, str(pid)) == (len(rollouts), sum(ok for _, ok in rollouts))


FAMILIES = [  # (reply, ground truth, task type, expected reward); CatData holds the truth as text
    (MATH_RESPONSE, MATH_TRUTH, "math", 2.0),
    (TEMPORAL_RESPONSE, '{"segment": [2.0, 6.0]}', "temporal_grounding", 2.0),
    (THINK + "<answer>00:04 - 00:08</answer>", "[2, 6]", "moment", 1 + 2 / 6),
]


def test_math_and_temporal_tasks_plugged_by_import_path(server, monkeypatch):
    monkeypatch.setenv("MIXED_REWARD_URL", server.url)
    traces, _ = score_all(plugged_tasks(FAMILIES))
    assert [t.reward for t in traces] == pytest.approx([s[3] for s in FAMILIES])
    assert all(set(t.metrics) == {"mixed_reward/accuracy", "mixed_reward/format"} for t in traces)
    assert [t.metrics["mixed_reward/accuracy"] for t in traces] == pytest.approx([1.0, 1.0, 2 / 6])
    assert all("mixed_reward" not in t.info for t in traces)  # explain is off by default


def test_explain_writes_what_the_rule_read_into_the_trace_info(server):
    reward = mixed_reward_func(server.url, explain=True)

    class ExplainedTask(vf.Task[CatData]):
        @vf.reward
        async def mixed(self, task, trace) -> float:
            return await reward(task, trace)

    tasks = [(ExplainedTask(CatData(prompt="Q", ground_truth=gt, task_type=tt)), reply) for reply, gt, tt, _ in FAMILIES]
    traces, _ = score_all(tasks)
    infos = [t.info["mixed_reward"] for t in traces]
    assert [i["parsed"] for i in infos] == ["0.5", [[2.0, 6.0]], [[4.0, 8.0]]]
    assert [i["timed_out"] for i in infos] == [False] * 3
    assert infos[0]["sub_scores"] == {} and infos[1]["sub_scores"] == {"tiou": 1.0, "boundary_penalty": 1.0}
    assert infos[2]["sub_scores"]["tiou"] == pytest.approx(2 / 6)
    assert traces[1].to_record()["info"]["mixed_reward"]["sub_scores"]["tiou"] == 1.0  # saved with the trace


def test_model_and_job_options_and_environment(default_table, tmp_path, monkeypatch):
    item = {"response": W_RESPONSE, "ground_truth": W_TRUTH, "task_type": "open_ended"}
    replies = [(W_RESPONSE, W_TRUTH, "open_ended"), (THINK + "<answer>yes</answer>", "yes", "yes_no"),
               (THINK + "<answer>no</answer>", "yes", "yes_no")]
    with tenancy_server(default_table, tmp_path) as srv:
        on_b = direct_rewards(srv.url, [item], model=POLICY_B)[0]
        assert on_b != direct_rewards(srv.url, [item])[0]
        reward = mixed_reward_func(srv.url, model=POLICY_B, job=JOB)

        class TenantTask(vf.Task[CatData]):
            @vf.reward
            async def mixed(self, task, trace) -> float:
                return await reward(task, trace)

        tasks = [(TenantTask(CatData(prompt="Q", ground_truth=gt, task_type=tt, prompt_id="vf-t")), r)
                 for r, gt, tt in replies]
        traces, _ = score_all(tasks)
        assert [t.reward for t in traces] == [on_b, 2.0, 1.0]
        assert prompt_counts(srv.url, "vf-t", job=JOB) == (3, 1)  # the open-ended rollout counts too

        for name, value in (("MIXED_REWARD_URL", srv.url), ("MIXED_REWARD_MODEL", POLICY_B),
                            ("MIXED_REWARD_JOB", "exp-vf")):
            monkeypatch.setenv(name, value)
        config = vf.TaskConfig(rewards=PLUGGED)
        plugged = [(CatTask(CatData(prompt="Q", ground_truth=gt, task_type=tt, prompt_id="vf-p"), config), r)
                   for r, gt, tt in replies]
        traces, _ = score_all(plugged)
        assert [t.reward for t in traces] == [on_b, 2.0, 1.0]
        assert prompt_counts(srv.url, "vf-p", job="exp-vf")[0] == 3 and prompt_missing(srv.url, "vf-p")
