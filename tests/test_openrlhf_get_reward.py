"""POST /get_reward (OpenRLHF's remote reward protocol), driven by OpenRLHF 0.11's own code.

OpenRLHF's ``SingleTurnAgentExecutor`` is what calls ``--reward.remote_url`` during rollouts: it
decodes prompt + generated tokens (special tokens kept), posts one sample per request and reads
``rewards``/``scores``/``extra_logs``. It runs here for real; only vLLM is replaced, by an engine
that "generates" fixed token ids.
"""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from types import SimpleNamespace

import httpx
import mixed_reward_client.openrlhf as openrlhf_file
import pytest
from mixed_reward_client import ServerUnavailable
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

PROMPT_MESSAGES = [{"role": "user", "content": "Is there a cat in the image? Answer yes or no."}]
THINK = "<think>I see whiskers.</think>"


def dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def post(url: str, body: dict, **kw) -> httpx.Response:
    return httpx.post(url + "/get_reward", json=body, timeout=30, **kw)


# --- the endpoint, byte for byte -------------------------------------------------------------


def test_protocol_shape_and_values(server):
    prompt = "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"
    body = {
        "query": [
            prompt + THINK + "<answer>yes</answer><|im_end|>",
            prompt + THINK + "<answer>a cat on a mat</answer><|im_end|><|endoftext|>",
            prompt + "<answer>[10, 10, 50, 50]</answer>",
            prompt + "no tags: 12,000 dollars</s>",
        ],
        "prompts": [prompt] * 4,
        "labels": [
            json.dumps({"ground_truth": "yes", "task_type": "yes_no"}),
            {"answer": "a cat on a mat", "task_type": "open_ended"},
            json.dumps({"solution": [10, 10, 50, 50], "task_type": "grounding"}),
            json.dumps({"answer": "12000", "task_type": "chart"}),
        ],
    }
    response = post(server.url, body)
    assert response.status_code == 200
    data = response.json()
    assert set(data) == {"rewards", "scores", "extra_logs"}
    assert data["rewards"] == [2.0, 3.0, 1.0, 1.0]
    # The accuracy on a 0..1 scale, which dynamic filtering reads: BMAS 2.0 (sum) maps to 1.0.
    assert data["scores"] == [1.0, 1.0, 1.0, 1.0]
    assert data["extra_logs"] == {"accuracy": [1.0, 2.0, 1.0, 1.0], "format": [1.0, 1.0, 0.0, 0.0]}


def test_eos_list_from_the_url_replaces_the_default(server):
    body = {"query": ["P" + THINK + "<answer>yes</answer><END>"], "prompts": ["P"],
            "labels": ['{"answer": "yes", "task_type": "yes_no"}']}
    assert post(server.url, body).json()["rewards"] == [1.0]  # <END> unknown: format fails
    response = httpx.post(server.url + "/get_reward", params={"eos": "<END>"}, json=body)
    assert response.json()["rewards"] == [2.0]
    assert post(server.url, {**body, "eos": ["<END>"]}).json()["rewards"] == [2.0]


def test_plain_labels_take_the_task_type_from_the_url(server):
    body = {"query": ["Q: yes?" + THINK + "<answer>yes</answer>"], "prompts": ["Q: yes?"], "labels": ["yes"]}
    missing = post(server.url, body)
    assert missing.status_code == 422
    assert missing.json()["error"]["details"][0]["field"] == "labels"
    assert "task_type" in missing.json()["error"]["message"]
    ok = httpx.post(server.url + "/get_reward?task_type=yorn", json=body)
    assert ok.json()["rewards"] == [2.0]


def test_prompt_found_after_a_bos_string_truncation_or_respacing(server):
    prompt = "x" * 400 + " Is it a cat?\n"
    label = '{"answer": "yes", "task_type": "yes_no"}'
    queries = [
        "<s>" + prompt + "<answer>no</answer>",  # BOS decoded in front
        prompt[-300:] + "<answer>no</answer>",  # OpenRLHF left-truncated the prompt
        prompt.replace(" Is it", "  Is it") + "<answer>no</answer>",  # decode changed spacing
    ]
    data = post(server.url, {"query": queries, "prompts": [prompt] * 3, "labels": [label] * 3}).json()
    # The prompt contains no yes/no answer, the response says "no": every one scores 0, not 1.
    assert data["rewards"] == [0.0, 0.0, 0.0]
    data = post(server.url, {"query": [q.replace("no<", "yes<") for q in queries], "prompts": [prompt] * 3,
                             "labels": [label] * 3}).json()
    assert data["rewards"] == [1.0, 1.0, 1.0]


def test_errors_name_the_sample_and_field(server):
    label = '{"answer": "yes", "task_type": "yes_no"}'
    cases = [
        ({"query": ["a", "b"], "prompts": ["a"], "labels": [label, label]}, None, "prompts"),
        ({"query": ["a"], "prompts": ["a"]}, None, "labels"),
        ({"query": ["abc"], "prompts": ["zzz"], "labels": [label]}, 0, "query"),
        ({"query": ["ab", "ab"], "prompts": ["a", "a"], "labels": [label, '{"answer": "x", "task_type": "?"}']},
         1, "labels"),
        ({"query": ["ab"], "prompts": ["a"], "labels": ['{"task_type": "mcq"}']}, 0, "labels"),
        ({"query": ["ab"], "prompts": ["a"], "labels": ['{"answer": "[1, 2", "task_type": "grounding"}']},
         0, "labels"),
    ]
    for body, item, field in cases:
        response = post(server.url, body)
        assert response.status_code == 422, body
        detail = response.json()["error"]["details"][0]
        assert (detail["item"], detail["field"]) == (item, field), response.json()


def test_empty_request(server):
    assert post(server.url, {"query": [], "prompts": [], "labels": []}).json() == {
        "rewards": [], "scores": [], "extra_logs": {"accuracy": [], "format": []}
    }


def test_token_by_header_or_query(default_table):
    body = {"query": ["P<answer>yes</answer>"], "prompts": ["P"], "labels": ['{"answer":"yes","task_type":"yes_no"}']}
    with running_server(default_table, api_token="tok") as srv:
        assert post(srv.url, body).status_code == 401
        assert post(srv.url, body, headers={"Authorization": "Bearer nope"}).status_code == 401
        assert post(srv.url, body, headers={"Authorization": "Bearer tok"}).json()["rewards"] == [1.0]
        assert httpx.post(srv.url + "/get_reward?token=tok", json=body).json()["rewards"] == [1.0]


# --- OpenRLHF's own request code -------------------------------------------------------------

agent = pytest.importorskip("openrlhf.utils.agent", reason="openrlhf not installed (pip install --no-deps openrlhf)")


class CannedEngine:
    """Stands in for vLLM: returns the token ids of a fixed response, ending in the EOS token."""

    def __init__(self, tokenizer, text: str) -> None:
        self.ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        self.text = text

    async def generate(self, prompt_token_ids, sampling_params, multi_modal_data=None):
        out = SimpleNamespace(token_ids=self.ids, text=self.text, finish_reason="stop", logprobs=None)
        return SimpleNamespace(outputs=[out])


def rollout(executor, samples) -> list[dict]:
    """What OpenRLHF does per rollout batch: one execute() per sample, all concurrently."""
    tokenizer = byte_tokenizer()
    prompt = tokenizer.apply_chat_template(PROMPT_MESSAGES, tokenize=False, add_generation_prompt=True)

    async def main():
        return await asyncio.gather(*(
            executor.execute(prompt, label, SimpleNamespace(max_tokens=256, logprobs=None), 1024, tokenizer,
                             CannedEngine(tokenizer, text))
            for text, label in samples
        ))

    return asyncio.run(main())


SAMPLES = [
    (THINK + "<answer>yes</answer>", '{"answer": "yes", "task_type": "yes_no"}'),
    (THINK + "<answer>no</answer>", '{"answer": "yes", "task_type": "yes_no"}'),
    ("<answer>yes</answer>", '{"ground_truth": "yes", "task_type": "binary"}'),
    (THINK + "<answer>a cat on a mat</answer>", '{"answer": "a cat on a mat", "task_type": "open_ended"}'),
]


def test_openrlhf_remote_url_scores_every_sample(server):
    executor = agent.SingleTurnAgentExecutor(remote_rm_url=[server.url + "/get_reward"])
    outputs = rollout(executor, SAMPLES)
    assert [o["reward"] for o in outputs] == [[2.0], [1.0], [1.0], [3.0]]
    assert [o["scores"] for o in outputs] == [[1.0], [0.0], [1.0], [1.0]]
    assert outputs[0]["extra_logs"] == {"accuracy": [1.0], "format": [1.0]}
    assert all(set(o["extra_logs"]) == {"accuracy", "format"} for o in outputs)


def test_openrlhf_python_file_fails_over(server, monkeypatch):
    monkeypatch.setenv("MIXED_REWARD_URL", f"{dead_url()},{server.url}")
    path = Path(openrlhf_file.__file__)
    executor = agent.SingleTurnAgentExecutor(remote_rm_url=[str(path)])  # loaded by path, as OpenRLHF does
    assert executor.reward_func is not None
    outputs = rollout(executor, SAMPLES)
    assert [o["reward"] for o in outputs] == [[2.0], [1.0], [1.0], [3.0]]
    assert [o["extra_logs"]["format"] for o in outputs] == [[1.0], [1.0], [0.0], [1.0]]


def test_label_prompt_id_reaches_the_posterior(default_table, tmp_path, monkeypatch):
    """`prompt_id` in the label object, through OpenRLHF's own executor on both paths (the plain
    URL and the Python file): the service's posterior counts each prompt's samples."""
    plan = {"orl-url": [True, True, False], 21: [False, True]}

    def samples(pid):
        label = json.dumps({"answer": "yes", "task_type": "yes_no", "prompt_id": pid})
        return [(THINK + f"<answer>{'yes' if ok else 'no'}</answer>", label) for ok in plan[pid]]

    with running_server(default_table, state_path=str(tmp_path / "state.db")) as srv:
        monkeypatch.setenv("MIXED_REWARD_URL", srv.url)
        plain_url = agent.SingleTurnAgentExecutor(remote_rm_url=[srv.url + "/get_reward"])
        python_file = agent.SingleTurnAgentExecutor(remote_rm_url=[openrlhf_file.__file__])
        by_url, by_file = rollout(plain_url, samples("orl-url")), rollout(python_file, samples(21))
        assert all(o["reward"] is not None for o in by_url + by_file)
        for pid, outcomes in plan.items():
            assert prompt_counts(srv.url, str(pid)) == (len(outcomes), sum(outcomes))


def test_python_file_raises_when_every_url_is_down(monkeypatch):
    monkeypatch.setenv("MIXED_REWARD_URL", f"{dead_url()},{dead_url()}")
    monkeypatch.setenv("MIXED_REWARD_MAX_ATTEMPTS", "3")
    executor = agent.SingleTurnAgentExecutor(remote_rm_url=[openrlhf_file.__file__])
    with pytest.raises(ServerUnavailable, match="6 attempts in 3 round"):
        executor.reward_func(["Pq"], ["P"], ['{"answer": "yes", "task_type": "yes_no"}'])


def test_openrlhf_remote_url_down_gives_no_reward_not_zero(default_table):
    with running_server(default_table) as srv:
        url = srv.url + "/get_reward"
    executor = agent.SingleTurnAgentExecutor(remote_rm_url=[url])
    (output,) = rollout(executor, SAMPLES[:1])  # OpenRLHF retries 5 times, 1 s apart, then gives up
    assert output["reward"] is None and output["scores"] is None  # the step then fails; never a 0


def test_open_ended_scores_fit_dynamic_filtering_range(server):
    """BMAS is [-2, 2] with "sum": scores map it onto OpenRLHF's 0..1 so a good group is kept."""
    prompt = "Describe the picture."
    body = {
        "query": [prompt + " a brown dog", prompt + " <answer>a brown dog</answer>"],
        "prompts": [prompt] * 2,
        "labels": [{"ground_truth": "a brown dog on the grass", "task_type": "caption"}] * 2,
    }
    summed = post(server.url, body).json()
    halved = post(server.url, {**body, "bmas_reduction": "mean"}).json()
    for data, low in ((summed, -2.0), (halved, -1.0)):
        for accuracy, score in zip(data["extra_logs"]["accuracy"], data["scores"]):
            assert 0.0 < score < 1.0
            assert score == pytest.approx((accuracy - low) / (-2 * low))


def test_a_bad_query_option_is_an_invalid_request_naming_it(server) -> None:
    """An option in the URL is the request's, not an item's: ``invalid_request`` naming the option."""
    body = {"query": ["Is it? yes"], "prompts": ["Is it?"], "labels": [{"ground_truth": "yes", "task_type": "yes_no"}]}
    unlabelled = {"query": ["Is it? yes"], "prompts": ["Is it?"], "labels": ["B"]}  # items that fail too
    for query, field in (("format_weight=heavy", "format_weight"), ("bmas_reduction=median", "bmas_reduction"),
                         ("profile=fast", "profile"), ("task_type=yesno", "task_type")):
        for payload in (body, unlabelled):  # the option is named first, whatever the items say
            error = httpx.post(f"{server.url}/get_reward?{query}", json=payload).json()["error"]
            assert error["type"] == "invalid_request", (query, error)
            assert error["details"][0]["field"] == field, (query, error)
    error = httpx.post(f"{server.url}/get_reward?profile=fast", json=body).json()["error"]
    assert "unknown profile 'fast'; valid profiles: mixed-r1, robust" in error["message"]


FAMILIES = [  # the new families' labels as OpenRLHF's label column holds them: JSON text
    (MATH_RESPONSE, json.dumps({"answer": MATH_TRUTH, "task_type": "math"})),
    (TEMPORAL_RESPONSE, json.dumps({"ground_truth": TEMPORAL_TRUTH, "task_type": "temporal_grounding"})),
    ("<answer>[4, 8]</answer>", json.dumps({"solution": TEMPORAL_TRUTH, "task_type": "tvg"})),
]


def test_openrlhf_carries_math_and_temporal_labels_on_both_paths(server, monkeypatch):
    """Labels of the new families through OpenRLHF's executor, plain URL and Python file: the same
    rewards, scores on 0..1 (tIoU already is) and the fixed extra_logs keys."""
    monkeypatch.setenv("MIXED_REWARD_URL", server.url)
    for endpoint in (server.url + "/get_reward", openrlhf_file.__file__):
        outputs = rollout(agent.SingleTurnAgentExecutor(remote_rm_url=[endpoint]), FAMILIES)
        assert [o["reward"] for o in outputs] == [[2.0], [2.0], [pytest.approx(2 / 6)]]
        assert [o["scores"] for o in outputs] == [[1.0], [1.0], [pytest.approx(2 / 6)]]
        assert all(set(o["extra_logs"]) == {"accuracy", "format"} for o in outputs)
        assert [o["extra_logs"]["format"] for o in outputs] == [[1.0], [1.0], [0.0]]


def test_openrlhf_model_and_job_in_the_remote_url(default_table, tmp_path, monkeypatch):
    """``--reward.remote_url "http://host:8000/get_reward?model=policy-b&job=exp2"``: OpenRLHF posts
    to the URL as given, so the query picks the table and the job; the Python file gets the same
    from MIXED_REWARD_MODEL / MIXED_REWARD_JOB."""
    item = {"response": W_RESPONSE, "ground_truth": W_TRUTH, "task_type": "open_ended"}
    samples = [(W_RESPONSE, json.dumps({"answer": W_TRUTH, "task_type": "open_ended"})),
               (THINK + "<answer>yes</answer>", json.dumps({"answer": "yes", "task_type": "yes_no", "prompt_id": "o"})),
               (THINK + "<answer>no</answer>", json.dumps({"answer": "yes", "task_type": "yes_no", "prompt_id": "o"}))]
    with tenancy_server(default_table, tmp_path) as srv:
        on_b = direct_rewards(srv.url, [item], model=POLICY_B)[0]
        assert on_b != direct_rewards(srv.url, [item])[0]
        url = f"{srv.url}/get_reward?model={POLICY_B}&job={JOB}"
        outputs = rollout(agent.SingleTurnAgentExecutor(remote_rm_url=[url]), samples)
        assert [o["reward"] for o in outputs] == [[on_b], [2.0], [1.0]]
        assert prompt_counts(srv.url, "o", job=JOB) == (2, 1) and prompt_missing(srv.url, "o")

        monkeypatch.setenv("MIXED_REWARD_URL", srv.url)
        monkeypatch.setenv("MIXED_REWARD_MODEL", POLICY_B)
        monkeypatch.setenv("MIXED_REWARD_JOB", "exp-file")
        # OpenRLHF loads the file afresh per executor: its client is made from this environment
        outputs = rollout(agent.SingleTurnAgentExecutor(remote_rm_url=[openrlhf_file.__file__]), samples)
        assert [o["reward"] for o in outputs] == [[on_b], [2.0], [1.0]]
        assert prompt_counts(srv.url, "o", job="exp-file") == (2, 1)
