"""verl 0.9: its own reward loop (``RewardLoopWorker`` -> ``NaiveRewardManager.run_single``) calling
``mixed_reward_client.verl.compute_score`` through ``reward.custom_reward_function``, against the
real server. Ray is not started: the worker class is the one verl wraps in ``ray.remote``."""

from __future__ import annotations

import asyncio
import json
import socket

import httpx
import mixed_reward_client._config as client_config
import numpy as np
import pytest
from mixed_reward_client import BadRequest, ServerUnavailable
from mixed_reward_client.verl import Coalescer, compute_score
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

torch = pytest.importorskip("torch")
reward_loop = pytest.importorskip(
    "verl.experimental.reward_loop.reward_loop", reason="verl not installed (pip install --no-deps verl)"
)
from omegaconf import OmegaConf
from verl import DataProto
from verl.experimental.reward_loop.reward_manager.naive import NaiveRewardManager
from verl.trainer.ppo.metric_utils import process_validation_metrics

THINK = "<think>look</think>"
# (response, ground truth, data_source, extra_info, expected score, accuracy, format)
SAMPLES = [
    (THINK + "<answer>yes</answer>", "yes", "mixed_r1", {"task_type": "yes_no", "index": np.int64(0)}, 2.0, 1.0, 1.0),
    ("<answer>no</answer>", "yes", "mixed_r1", {"task_type": "yorn", "index": np.int64(1)}, 0.0, 0.0, 0.0),
    (THINK + "<answer>(B) 3 cm</answer>", "B", "mixed_r1", {"task_type": "mcq", "n": np.int32(4)}, 2.0, 1.0, 1.0),
    (THINK + "<answer>12,000</answer>", np.int64(12000), "chart", {"split": "train"}, 2.0, 1.0, 1.0),
    (THINK + "<answer>[10, 10, 50, 50]</answer>", np.array([10, 10, 50, 50]), "grounding",
     {"score_weight": np.float32(1.0)}, 2.0, 1.0, 1.0),
    (THINK + "<answer>a cat on a mat</answer>", "a cat on a mat", "mixed_r1", {"task_type": "open_ended"},
     3.0, 2.0, 1.0),
]


def dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("policy")
    byte_tokenizer().save_pretrained(path)
    return path


def verl_config(tokenizer_dir, **reward_kwargs):
    """The YAML verl builds from `reward.custom_reward_function.path=pkg://mixed_reward_client.verl` etc."""
    return OmegaConf.create({
        "actor_rollout_ref": {"model": {"path": str(tokenizer_dir), "tokenizer_path": None}},
        "reward": {
            "num_workers": 1,
            "custom_reward_function": {
                "path": "pkg://mixed_reward_client.verl",
                "name": "compute_score",
                "reward_kwargs": {"max_attempts": 3, "backoff": 0.05, **reward_kwargs},
            },
            "reward_manager": {"name": "naive", "source": "register", "module": {"path": None, "name": None}},
            "reward_model": {"enable": False},
        },
    })


def rollout_batch(samples, repeat: int = 1) -> DataProto:
    """A batch as verl's rollout hands it over: left-padded prompts, right-padded responses."""
    tok = byte_tokenizer()
    rows = [s for s in samples for _ in range(repeat)]
    prompt = tok("<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    encoded = [tok(r[0], add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for r in rows]
    width = max(len(e) for e in encoded) + 3
    responses = torch.full((len(rows), width), tok.pad_token_id)
    mask = torch.zeros((len(rows), len(prompt) + width), dtype=torch.long)
    mask[:, : len(prompt)] = 1
    for i, ids in enumerate(encoded):
        responses[i, : len(ids)] = torch.tensor(ids)
        mask[i, len(prompt) : len(prompt) + len(ids)] = 1
    return DataProto.from_dict(
        tensors={"prompts": torch.tensor([prompt] * len(rows)), "responses": responses, "attention_mask": mask},
        non_tensors={
            "data_source": np.array([r[2] for r in rows], dtype=object),
            "reward_model": np.array([{"ground_truth": r[1], "style": "rule"} for r in rows], dtype=object),
            "extra_info": np.array([dict(r[3]) for r in rows], dtype=object),
        },
    )


def run_worker(config, data: DataProto):
    """RewardLoopWorker.compute_score_batch, then the aggregation RewardLoopManager.compute_rm_score does."""

    async def main():
        worker = reward_loop.RewardLoopWorker(config)
        outputs = await worker.compute_score_batch(data)
        coalescers = [c for c in client_config._PER_LOOP[asyncio.get_running_loop()].values()
                      if isinstance(c, Coalescer)]
        return outputs, sum(c.requests for c in coalescers)

    outputs, requests = asyncio.run(main())
    scores = [o["reward_score"] for o in outputs]
    rm_scores = NaiveRewardManager.assemble_rm_scores(data, scores)
    infos = [o["reward_extra_info"] for o in outputs]
    extra = {key: np.array([info[key] for info in infos]) for key in infos[0]}  # fails on uneven keys
    return scores, rm_scores, extra, requests


def test_verl_reward_loop_scores_every_sample(server, tokenizer_dir):
    data = rollout_batch(SAMPLES, repeat=8)
    scores, rm_scores, extra, requests = run_worker(verl_config(tokenizer_dir, url=server.url, flush_ms=50), data)
    expected = [s[4] for s in SAMPLES for _ in range(8)]
    assert scores == expected
    assert rm_scores.sum(dim=1).tolist() == expected  # placed on the last valid response token
    assert set(extra) == {"score", "accuracy", "format"}
    assert extra["accuracy"].tolist() == [s[5] for s in SAMPLES for _ in range(8)]
    assert extra["format"].tolist() == [s[6] for s in SAMPLES for _ in range(8)]
    assert np.isfinite(extra["score"]).all()
    assert 1 <= requests <= 4  # 48 concurrent per-sample calls coalesced into a few POST /score


def test_verl_extra_info_prompt_id_reaches_the_posterior(default_table, tokenizer_dir, tmp_path):
    """`extra_info["prompt_id"]` (numpy from parquet, or text) as docs/difficulty.md says to set it:
    after verl's reward loop, the service's posterior counts every rollout of each prompt."""
    yes = {"task_type": "yes_no"}
    box = {"task_type": "grounding", "prompt_id": "g-1"}
    samples = [  # (response, truth, data_source, extra_info, correct)
        *[(THINK + "<answer>yes</answer>", "yes", "mixed_r1", {**yes, "prompt_id": np.int64(7)}, True)] * 3,
        ("<answer>no</answer>", "yes", "mixed_r1", {**yes, "prompt_id": np.int64(7)}, False),
        (THINK + "<answer>[10, 10, 50, 50]</answer>", [10, 10, 50, 50], "grounding", box, True),
        (THINK + "<answer>[60, 60, 90, 90]</answer>", [10, 10, 50, 50], "grounding", box, False),
        (THINK + "<answer>yes</answer>", "yes", "mixed_r1", dict(yes), True),  # no prompt id: not counted
    ]
    rows = [(r, gt, ds, info, 0.0, 0.0, 0.0) for r, gt, ds, info, _ in samples]
    with running_server(default_table, state_path=str(tmp_path / "state.db")) as srv:
        run_worker(verl_config(tokenizer_dir, url=srv.url, flush_ms=50), rollout_batch(rows, repeat=2))
        for key in ("7", "g-1"):
            outcomes = [correct for *_, info, correct in samples if str(info.get("prompt_id")) == key] * 2
            assert prompt_counts(srv.url, key) == (len(outcomes), sum(outcomes))
        assert len(httpx.get(srv.url + "/v1/prompts").text.splitlines()) == 2


def test_verl_flushes_on_size(server, tokenizer_dir):
    data = rollout_batch(SAMPLES, repeat=4)
    scores, _, _, requests = run_worker(verl_config(tokenizer_dir, url=server.url, flush_ms=1000, max_batch=8), data)
    assert scores == [s[4] for s in SAMPLES for _ in range(4)]
    assert requests == 3  # 24 samples, flushed every 8 without waiting for the 1 s timer


def test_verl_fails_over_to_the_second_url(server, tokenizer_dir):
    config = verl_config(tokenizer_dir, url=[dead_url(), server.url])  # reward_kwargs.url=[a,b]
    scores, _, _, _ = run_worker(config, rollout_batch(SAMPLES))
    assert scores == [s[4] for s in SAMPLES]


def test_verl_killed_server_raises_not_zero(default_table, tokenizer_dir):
    with running_server(default_table) as srv:
        url = srv.url
    with pytest.raises(ServerUnavailable, match="3 attempts"):
        run_worker(verl_config(tokenizer_dir, url=url), rollout_batch(SAMPLES[:2]))


def test_verl_zero_fallback_only_when_asked(default_table, tokenizer_dir):
    config = verl_config(tokenizer_dir, url=dead_url(), on_failure="zero")
    scores, _, extra, _ = run_worker(config, rollout_batch(SAMPLES[:2]))
    assert scores == [0.0, 0.0] and set(extra) == {"score", "accuracy", "format"}


def test_verl_unknown_data_source_is_a_clear_error(server, tokenizer_dir):
    bad = [("<answer>x</answer>", "x", "hiyouga/geometry3k", {}, 0.0, 0.0, 0.0)]
    with pytest.raises(BadRequest, match="task_type") as caught:
        run_worker(verl_config(tokenizer_dir, url=server.url), rollout_batch(bad))
    assert caught.value.details[0]["field"] == "task_type"


def test_compute_score_direct_call_with_fixed_task_type(server):
    async def main():
        return await compute_score("anything", THINK + "<answer>Yes.</answer>", "yes", None,
                                   url=server.url, task_type="binary", num_turns=None)

    assert asyncio.run(main()) == {"score": 2.0, "accuracy": 1.0, "format": 1.0}


def test_readme_override_lines_parse_with_hydra():
    parser_mod = pytest.importorskip("hydra.core.override_parser.overrides_parser")
    parser = parser_mod.OverridesParser.create()
    lines = {
        "reward.custom_reward_function.path=pkg://mixed_reward_client.verl": "pkg://mixed_reward_client.verl",
        "reward.custom_reward_function.name=compute_score": "compute_score",
        "+reward.custom_reward_function.reward_kwargs.url=[http://rm-a:8000,http://rm-b:8000]":
            ["http://rm-a:8000", "http://rm-b:8000"],
        "+reward.custom_reward_function.reward_kwargs.format_weight=0.5": 0.5,
        "+reward.custom_reward_function.reward_kwargs.model=policy-b": "policy-b",
        "+reward.custom_reward_function.reward_kwargs.job=exp2": "exp2",
        "+reward.custom_reward_function.reward_kwargs.explain=true": True,
    }
    for line, value in lines.items():
        override = parser.parse_override(line)
        assert not override.is_sweep_override() and override.value() == value


# (response, ground truth, data_source, extra_info, expected score, accuracy, format): the new
# families next to the paper's, in one batch, so every sample must come back with the same keys.
FAMILIES = [
    (MATH_RESPONSE, MATH_TRUTH, "math", {}, 2.0, 1.0, 1.0),
    (TEMPORAL_RESPONSE, TEMPORAL_TRUTH, "mixed_r1", {"task_type": "temporal_grounding"}, 2.0, 1.0, 1.0),
    (THINK + "<answer>(B) 3 cm</answer>", "B", "mixed_r1", {"task_type": "mcq"}, 2.0, 1.0, 1.0),
    (THINK + "<answer>a cat on a mat</answer>", "a cat on a mat", "mixed_r1", {"task_type": "open_ended"},
     3.0, 2.0, 1.0),
    ("<answer>maybe</answer>", "yes", "mixed_r1", {"task_type": "yes_no"}, 0.0, 0.0, 0.0),
]


def test_verl_carries_math_and_temporal_items_with_one_key_set(server, tokenizer_dir):
    """verl stacks every key across the batch: the temporal result's tiou/boundary_penalty and the
    open-ended BMAS terms never become keys of some samples only."""
    scores, rm_scores, extra, _ = run_worker(verl_config(tokenizer_dir, url=server.url), rollout_batch(FAMILIES))
    assert scores == [s[4] for s in FAMILIES]
    assert rm_scores.sum(dim=1).tolist() == [s[4] for s in FAMILIES]
    assert set(extra) == {"score", "accuracy", "format"}
    assert extra["accuracy"].tolist() == [s[5] for s in FAMILIES]


def test_verl_explain_adds_pred_and_timed_out_for_every_sample(server, tokenizer_dir):
    scores, _, extra, _ = run_worker(verl_config(tokenizer_dir, url=server.url, explain=True),
                                     rollout_batch(FAMILIES))
    assert scores == [s[4] for s in FAMILIES]  # explaining changes no reward
    assert set(extra) == {"score", "accuracy", "format", "pred", "timed_out"}
    preds = extra["pred"].tolist()
    assert preds[:3] == ["0.5", "[[2.0,6.0]]", "B"] and preds[4] == ""  # "" : the rule read no answer
    weakest = json.loads(preds[3])  # open-ended: the weakest tokens, all a perfect match here
    assert {t["token"] for t in weakest} == {"a", "cat", "on", "mat"}
    assert [t["similarity"] for t in weakest] == pytest.approx([1.0] * 4)
    assert extra["timed_out"].tolist() == [0.0] * len(FAMILIES)
    # verl's validation metrics read these as they are: pred votes (maj@N), strings are skipped for means
    metrics = process_validation_metrics(["mixed_r1"] * 2, ["u0", "u0"],
                                         {"score": extra["score"][:2].tolist(), "pred": preds[:2]})
    assert metrics["mixed_r1"]["score"]["maj@2/mean"] == 2.0 and "pred" not in metrics["mixed_r1"]


def test_verl_explain_keys_survive_on_failure_zero(tokenizer_dir):
    config = verl_config(tokenizer_dir, url=dead_url(), on_failure="zero", explain=True, max_attempts=1)
    scores, _, extra, _ = run_worker(config, rollout_batch(FAMILIES[:2]))
    assert scores == [0.0, 0.0] and set(extra) == {"score", "accuracy", "format", "pred", "timed_out"}


def test_verl_model_and_job_reward_kwargs(default_table, tokenizer_dir, tmp_path):
    """``reward_kwargs.model`` picks the service's table, ``reward_kwargs.job`` the job whose
    difficulty state the run's rollouts feed."""
    samples = [
        (W_RESPONSE, W_TRUTH, "mixed_r1", {"task_type": "open_ended"}, 0.0, 0.0, 0.0),
        (THINK + "<answer>yes</answer>", "yes", "mixed_r1", {"task_type": "yes_no", "prompt_id": "v-1"}, 0.0, 0.0, 0.0),
        ("<answer>no</answer>", "yes", "mixed_r1", {"task_type": "yes_no", "prompt_id": "v-1"}, 0.0, 0.0, 0.0),
    ]
    item = {"response": W_RESPONSE, "ground_truth": W_TRUTH, "task_type": "open_ended"}
    with tenancy_server(default_table, tmp_path) as srv:
        scores, _, _, _ = run_worker(verl_config(tokenizer_dir, url=srv.url, model=POLICY_B, job=JOB),
                                     rollout_batch(samples))
        on_b = direct_rewards(srv.url, [item], model=POLICY_B)[0]
        assert scores == [on_b, 2.0, 0.0] and on_b != direct_rewards(srv.url, [item])[0]
        assert prompt_counts(srv.url, "v-1", job=JOB) == (2, 1)
        assert prompt_missing(srv.url, "v-1")
