"""TRL 1.x: a real ``GRPOTrainer`` step on a tiny randomly initialised model (built from a config,
nothing downloaded) with ``mixed_reward_func`` against the real server, plus the reward function
called exactly as ``GRPOTrainer._calculate_rewards`` calls it."""

from __future__ import annotations

import asyncio
import json
import math
import socket

import httpx
import pytest
from mixed_reward_client import RewardClient, ServerUnavailable
from mixed_reward_client._samples import parsed_text
from mixed_reward_client.trl import MixedReward, _group_ids, completion_text, mixed_reward_func
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

THINK = "<think>look</think>"


def dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


class Recorder:
    """Collects what TRL's log_metric / log_extra hooks receive."""

    def __init__(self) -> None:
        self.metrics: dict[str, list[float]] = {}
        self.extra: dict[str, list] = {}

    def log_metric(self, name: str, value: float) -> None:
        self.metrics.setdefault(name, []).append(value)

    def log_extra(self, column: str, values: list) -> None:
        self.extra.setdefault(column, []).extend(values)


def call_like_trl(fn, prompts, completions, **columns):
    """GRPOTrainer runs async reward functions on its own loop with these keyword arguments."""
    rec = Recorder()
    rewards = asyncio.run(fn(prompts=prompts, completions=completions, completion_ids=[[1]] * len(completions),
                             trainer_state=None, log_metric=rec.log_metric, log_extra=rec.log_extra, **columns))
    return rewards, rec


def test_conversational_completions_exact_values_and_logging(server):
    prompt = [{"role": "user", "content": "Is there a cat? Then describe it."}]
    completions = [
        [{"role": "assistant", "content": THINK + "<answer>yes</answer>"}],
        [{"role": "assistant", "content": [{"type": "text", "text": THINK + "<answer>"},
                                           {"type": "text", "text": "no</answer>"}]}],
        [{"role": "assistant", "content": THINK + "<answer>a cat on a mat</answer>"}],
    ]
    fn = mixed_reward_func(server.url)
    assert fn.__name__ == "mixed_reward"
    rewards, rec = call_like_trl(fn, [prompt, prompt, [{"role": "user", "content": "other"}]], completions,
                                 task_type=["yes_no", "yes_no", "open_ended"],
                                 ground_truth=["yes", "yes", "a cat on a mat"])
    assert rewards == [2.0, 1.0, 3.0]
    assert rec.extra["mixed_reward/accuracy"] == [1.0, 0.0, 2.0]
    assert rec.extra["mixed_reward/format"] == [1.0, 1.0, 1.0]
    assert rec.extra["mixed_reward/task_type"] == ["yes_no", "yes_no", "open_ended"]
    assert rec.metrics["mixed_reward/accuracy"] == [pytest.approx(1.0)]
    assert rec.metrics["mixed_reward/accuracy/yes_no"] == [0.5]
    assert rec.metrics["mixed_reward/zero_variance_groups"] == [0.5]  # the 1-completion group


def test_plain_completions_solution_column_and_fixed_task(server):
    fn = mixed_reward_func(server.url, task_type="chart", format_weight=0.0)
    rewards, _ = call_like_trl(fn, ["p1", "p2"], ["<answer>45%</answer>", "<answer>3</answer>"],
                               solution=["0.45", "4"])
    assert rewards == [1.0, 0.0]


def test_missing_columns_are_clear_errors(server):
    fn = mixed_reward_func(server.url)
    with pytest.raises(Exception, match="ground-truth column"):
        call_like_trl(fn, ["p"], ["x"], task_type=["yes_no"])
    with pytest.raises(Exception, match="task type"):
        call_like_trl(fn, ["p"], ["x"], ground_truth=["yes"])


def test_failover_killed_server_and_explicit_fallback(server, default_table):
    ok, _ = call_like_trl(mixed_reward_func([dead_url(), server.url]), ["p"], ["<answer>yes</answer>"],
                          task_type=["yes_no"], ground_truth=["yes"])
    assert ok == [1.0]
    with running_server(default_table) as srv:
        url = srv.url
    fn = mixed_reward_func(url, max_attempts=3, backoff=0.05)
    with pytest.raises(ServerUnavailable, match="3 attempts"):
        call_like_trl(fn, ["p"], ["<answer>yes</answer>"], task_type=["yes_no"], ground_truth=["yes"])
    fallback = mixed_reward_func(url, max_attempts=2, backoff=0.01, on_failure="none")
    assert call_like_trl(fallback, ["p"], ["x"], task_type=["yes_no"], ground_truth=["yes"])[0] == [None]


def test_env_configured_instance_for_the_trl_cli(server, monkeypatch):
    monkeypatch.setenv("MIXED_REWARD_URL", server.url)
    from mixed_reward_client.trl import mixed_reward

    assert isinstance(mixed_reward, MixedReward)
    rewards, _ = call_like_trl(mixed_reward, ["p"], ["<answer>B</answer>"], task_type=["mcq"], ground_truth=["(B)"])
    assert rewards == [1.0]


def test_completion_text_forms():
    assert completion_text("plain") == "plain"
    assert completion_text([{"role": "assistant", "content": "a"}, {"role": "tool", "content": "t"},
                            {"role": "assistant", "content": "b"}]) == "b"
    assert completion_text({"role": "assistant", "content": None}) == ""


def test_groups_are_runs_of_equal_prompt_and_image(server):
    """TRL puts a prompt's num_generations completions next to each other; the same question about
    another image, or the same prompt drawn again later in the batch, is another group."""
    image_mod = pytest.importorskip("PIL.Image")

    def image(color):  # a new object per row, as `datasets` decodes an image column
        return image_mod.new("RGB", (8, 8), color)

    question = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is there a cat?"}]}]
    colors = ["red", "red", "blue", "blue", "red", "red"]
    assert _group_ids([question] * 6, [[image(c)] for c in colors]) == [0, 0, 1, 1, 2, 2]
    assert _group_ids([question] * 6, [image(c) for c in colors]) == [0, 0, 1, 1, 2, 2]
    assert _group_ids(["a", "a", "b", "b", "a", "a"]) == [0, 0, 1, 1, 2, 2]
    assert _group_ids(["a", "a", "a"]) == [0, 0, 0]

    answers = ["yes", "no", "yes", "yes", "no", "no"]
    rewards, rec = call_like_trl(mixed_reward_func(server.url, format_weight=0.0), [question] * 6,
                                 [f"<answer>{a}</answer>" for a in answers], task_type=["yes_no"] * 6,
                                 ground_truth=["yes"] * 6, images=[[image(c)] for c in colors])
    assert rewards == [1.0, 0.0, 1.0, 1.0, 0.0, 0.0]
    # groups (1, 0), (1, 1), (0, 0): two of three have no variance; one merged group would have some
    assert rec.metrics["mixed_reward/zero_variance_groups"] == [pytest.approx(2 / 3)]


def test_math_and_temporal_completions_and_the_explain_columns(server):
    columns = {"task_type": ["math", "temporal_grounding", "yes_no"],
               "ground_truth": [MATH_TRUTH, TEMPORAL_TRUTH, "yes"]}
    completions = [MATH_RESPONSE, TEMPORAL_RESPONSE, "<answer>maybe</answer>"]
    rewards, rec = call_like_trl(mixed_reward_func(server.url), ["p1", "p2", "p3"], completions, **columns)
    assert rewards == [2.0, 2.0, 0.0]
    assert rec.extra["mixed_reward/accuracy"] == [1.0, 1.0, 0.0]
    assert rec.metrics["mixed_reward/accuracy/math"] == [1.0]
    assert rec.metrics["mixed_reward/accuracy/temporal_grounding"] == [1.0]
    assert set(rec.extra) == {"mixed_reward/accuracy", "mixed_reward/format", "mixed_reward/task_type"}
    assert not any(name.endswith(("/tiou", "/timed_out")) for name in rec.metrics)  # explain is off by default

    explained, rec = call_like_trl(mixed_reward_func(server.url, explain=True), ["p1", "p2", "p3"], completions,
                                   **columns)
    assert explained == rewards
    assert rec.extra["mixed_reward/parsed"] == ["0.5", "[[2.0,6.0]]", ""]  # "": no yes/no word read
    assert rec.extra["mixed_reward/timed_out"] == [False, False, False]
    assert rec.metrics["mixed_reward/timed_out"] == [0.0]
    assert rec.metrics["mixed_reward/tiou"] == [1.0] and rec.metrics["mixed_reward/boundary_penalty"] == [1.0]


def test_model_and_job_options_and_environment(default_table, tmp_path, monkeypatch):
    prompts = ["Describe it.", "Is there a cat?", "Is there a cat?"]
    completions = [W_RESPONSE, THINK + "<answer>yes</answer>", THINK + "<answer>no</answer>"]
    columns = {"task_type": ["open_ended", "yes_no", "yes_no"], "ground_truth": [W_TRUTH, "yes", "yes"],
               "prompt_id": [None, "trl-t", "trl-t"]}
    item = {"response": W_RESPONSE, "ground_truth": W_TRUTH, "task_type": "open_ended"}
    with tenancy_server(default_table, tmp_path) as srv:
        on_b = direct_rewards(srv.url, [item], model=POLICY_B)[0]
        assert on_b != direct_rewards(srv.url, [item])[0]
        rewards, _ = call_like_trl(mixed_reward_func(srv.url, model=POLICY_B, job=JOB), prompts, completions, **columns)
        assert rewards == [on_b, 2.0, 1.0]
        assert prompt_counts(srv.url, "trl-t", job=JOB) == (2, 1) and prompt_missing(srv.url, "trl-t")

        monkeypatch.setenv("MIXED_REWARD_URL", srv.url)  # the `trl grpo --reward_funcs ...` instance
        monkeypatch.setenv("MIXED_REWARD_MODEL", POLICY_B)
        monkeypatch.setenv("MIXED_REWARD_JOB", "exp-cli")
        from mixed_reward_client.trl import mixed_reward

        assert call_like_trl(mixed_reward, prompts, completions, **columns)[0] == [on_b, 2.0, 1.0]
        assert prompt_counts(srv.url, "trl-t", job="exp-cli") == (2, 1)


trl = pytest.importorskip("trl", reason="trl not installed")


def grpo_trainer(url: str, rows: list[dict], output_dir, batch_size: int = 4, reward_func=None):
    """A real GRPOTrainer on a tiny randomly initialised Qwen2 (built from a config, nothing
    downloaded), rewarded by the service at ``url``: one step, ``batch_size // 4`` prompts x 4."""
    import torch
    from datasets import Dataset
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    tok = byte_tokenizer()
    model = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=256, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, tie_word_embeddings=True,
    ))
    args = trl.GRPOConfig(
        output_dir=str(output_dir), per_device_train_batch_size=batch_size, num_generations=4,
        max_completion_length=8, max_steps=1, logging_steps=1, report_to="none", use_cpu=True,
        save_strategy="no", seed=0, dataloader_num_workers=0, log_completions=False,
    )
    return trl.GRPOTrainer(model=model, processing_class=tok, args=args,
                           reward_funcs=[reward_func or mixed_reward_func(url)], train_dataset=Dataset.from_list(rows * 4))


def test_grpo_trainer_step_with_the_service(server, tmp_path):
    rows = [
        {"prompt": [{"role": "user", "content": "Is there a cat?"}], "task_type": "yes_no", "ground_truth": "yes"},
        {"prompt": [{"role": "user", "content": "Describe the image."}], "task_type": "open_ended",
         "ground_truth": "a cat sitting on a mat"},
    ]
    trainer = grpo_trainer(server.url, rows, tmp_path)
    logs = trainer._logs  # what TRL logs per completion, filled during the step
    trainer.train()

    rewards = list(logs["rewards"]["mixed_reward"])
    completions = list(logs["completion"])
    assert len(rewards) == len(completions) == 4 and all(math.isfinite(r) for r in rewards)  # no NaN: every one scored
    # Every reward is exactly what the service gives that completion.
    tasks = list(logs["extra"]["mixed_reward/task_type"])
    truths = {"yes_no": "yes", "open_ended": "a cat sitting on a mat"}
    with RewardClient(server.url) as client:
        direct = client.score([{"response": completion_text(c), "ground_truth": truths[t], "task_type": t}
                               for c, t in zip(completions, tasks)])
    assert rewards == pytest.approx(direct.rewards, abs=1e-6)
    assert list(logs["extra"]["mixed_reward/accuracy"]) == pytest.approx([r["accuracy"] for r in direct.results])
    history = trainer.state.log_history[0]
    assert "mixed_reward/accuracy" in history and "mixed_reward/format" in history
    assert history["rewards/mixed_reward/mean"] == pytest.approx(sum(rewards) / len(rewards), abs=1e-5)


def test_prompt_id_column_reaches_the_posterior(default_table, tmp_path):
    """A `prompt_id` dataset column: called as GRPOTrainer._calculate_rewards calls the function,
    then through a real GRPOTrainer step; the service's posterior counts each prompt's completions."""
    answers = {"trl-a": ["yes", "yes", "no"], 12: ["no", "yes"]}
    prompts = [f"Is there a cat? ({pid})" for pid, a in answers.items() for _ in a]
    ids = [pid for pid, a in answers.items() for _ in a]
    completions = [THINK + f"<answer>{x}</answer>" for a in answers.values() for x in a]
    rows = [
        {"prompt": [{"role": "user", "content": f"Is there a {animal}?"}], "task_type": "yes_no",
         "ground_truth": truth, "prompt_id": f"trl-{animal}"}
        for animal, truth in (("cat", "yes"), ("dog", "no"))
    ]
    with running_server(default_table, state_path=str(tmp_path / "state.db")) as srv:
        call_like_trl(mixed_reward_func(srv.url), prompts, completions, task_type=["yes_no"] * len(ids),
                      ground_truth=["yes"] * len(ids), prompt_id=ids)
        for pid, a in answers.items():
            assert prompt_counts(srv.url, str(pid)) == (len(a), a.count("yes"))

        trainer = grpo_trainer(srv.url, rows, tmp_path / "out", batch_size=8)
        logs = trainer._logs
        trainer.train()
        counts = {"trl-cat": [0, 0], "trl-dog": [0, 0]}
        for prompt, accuracy in zip(logs["prompt"], logs["extra"]["mixed_reward/accuracy"]):
            count = counts["trl-cat" if "cat" in str(prompt) else "trl-dog"]
            count[0] += 1
            count[1] += accuracy == 1.0
        assert sum(n for n, _ in counts.values()) == 8
        for pid, (n, successes) in counts.items():
            if n:
                assert prompt_counts(srv.url, pid) == (n, successes)
            else:
                assert httpx.get(f"{srv.url}/v1/prompts/{pid}").status_code == 404


def test_grpo_trainer_step_logs_the_explain_columns(default_table, tmp_path):
    """A real GRPOTrainer step with ``explain=True`` and a model and job: TRL's completions table
    (``trainer._logs``) gets the parsed answers, one per completion, and its logged metrics the
    overrun rate and the temporal item's tIoU, as TRL's own accuracy_reward logs its parsed columns."""
    rows = [
        # A dataset column holds one type: the truth object as its JSON text, which the service reads the same.
        {"prompt": [{"role": "user", "content": "When does the cat jump?"}], "task_type": "temporal_grounding",
         "ground_truth": json.dumps(TEMPORAL_TRUTH), "prompt_id": "trl-when"},
        {"prompt": [{"role": "user", "content": "Is there a cat?"}], "task_type": "yes_no", "ground_truth": "yes",
         "prompt_id": "trl-cat"},
    ]
    with tenancy_server(default_table, tmp_path / "srv") as srv:
        fn = mixed_reward_func(srv.url, model=POLICY_B, job=JOB, explain=True)
        trainer = grpo_trainer(srv.url, rows, tmp_path / "out", batch_size=8, reward_func=fn)
        logs = trainer._logs
        trainer.train()
        completions = list(logs["completion"])
        tasks = list(logs["extra"]["mixed_reward/task_type"])
        assert len(completions) == 8 and len(list(logs["extra"]["mixed_reward/parsed"])) == 8
        truths = {"temporal_grounding": TEMPORAL_TRUTH, "yes_no": "yes"}
        with RewardClient(srv.url, model=POLICY_B, job="check") as client:
            direct = client.score([{"response": completion_text(c), "ground_truth": truths[t], "task_type": t}
                                   for c, t in zip(completions, tasks)], explain=True)
        assert list(logs["extra"]["mixed_reward/parsed"]) == [parsed_text(r) for r in direct.results]
        assert list(logs["extra"]["mixed_reward/timed_out"]) == [False] * 8
        history = trainer.state.log_history[0]
        assert history["mixed_reward/timed_out"] == 0.0
        if "temporal_grounding" in tasks:
            tious = [r["tiou"] for r in direct.results if "tiou" in r]
            assert history["mixed_reward/tiou"] == pytest.approx(sum(tious) / len(tious))
        for task, pid in (("temporal_grounding", "trl-when"), ("yes_no", "trl-cat")):
            if task in tasks:  # the step draws 2 of the 4 repeated rows: one task may be missing
                assert prompt_counts(srv.url, pid, job=JOB)[0] == tasks.count(task)
                assert prompt_missing(srv.url, pid)  # counted for the job, not for `default`
