"""POST /slime: slime's ``--rm-type remote_rm`` protocol, against the real server.

slime is not on the package index, so the request is the one its code builds, reproduced here
from THUDM/slime at commit 624b824a898ab0ec1fcb4d373004c7f3852bf515,
``slime/rollout/rm_hub/__init__.py`` (``remote_rm``)::

    payload = {"prompt": sample.prompt, "response": sample.response, "label": sample.label}
    async with session.post(args.rm_url, json=payload) as resp:
        resp.raise_for_status()
        return await resp.json()

and ``slime/utils/types.py`` (``Sample.get_reward_value``)::

    return self.reward if not args.reward_key else self.reward[args.reward_key]

With ``--group-rm``, ``batched_async_rm`` gathers one ``remote_rm`` call per sample of the group.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import httpx
import pytest
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
    direct_rewards,
    prompt_counts,
    prompt_missing,
    tenancy_server,
)

THINK = "<think>I see whiskers.</think>"
KEYS = {"reward", "accuracy", "format", "task_type", "bmas_forward", "bmas_backward"}
PROMPT = [{"role": "user", "content": "Is there a cat in the image? Answer yes or no."}]
# (response, label, expected reward)
SAMPLES = [
    (THINK + "<answer>yes</answer>", {"ground_truth": "yes", "task_type": "yes_no"}, 2.0),
    (THINK + "<answer>no</answer>", json.dumps({"answer": "yes", "task_type": "yes_no"}), 1.0),
    (THINK + "<answer>(B) 3 cm</answer>", json.dumps({"solution": "B", "task_type": "mcq"}), 2.0),
    ("12,000", {"ground_truth": 12000, "task_type": "chart"}, 1.0),  # untagged: accuracy only
    (THINK + "<answer>[10, 10, 50, 50]</answer>", {"ground_truth": [10, 10, 50, 50], "task_type": "grounding"}, 2.0),
    (THINK + "<answer>a cat on a mat</answer>", {"ground_truth": "a cat on a mat", "task_type": "open_ended"}, 3.0),
]


async def remote_rm(rm_url: str, prompt, response: str, label) -> dict:
    """slime's remote_rm request, as quoted in the module docstring (one attempt)."""
    payload = {"prompt": prompt, "response": response, "label": label}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session,
        session.post(rm_url, json=payload) as resp,
    ):
        resp.raise_for_status()
        return await resp.json()


def slime_rewards(rm_url: str, samples, reward_key: str = "reward") -> tuple[list[dict], list[float]]:
    async def group():  # batched_async_rm: asyncio.gather over per-sample calls
        return await asyncio.gather(*(remote_rm(rm_url, PROMPT, r, label) for r, label, _ in samples))

    replies = asyncio.run(group())
    return replies, [reply[reward_key] for reply in replies]  # Sample.get_reward_value


def test_remote_rm_per_sample_and_reward_key(server):
    replies, rewards = slime_rewards(server.url + "/slime", SAMPLES)
    assert rewards == [s[2] for s in SAMPLES]
    assert all(set(r) == KEYS for r in replies)
    assert [r["task_type"] for r in replies] == ["yes_no", "yes_no", "mcq", "chart", "grounding", "open_ended"]
    assert [r["bmas_forward"] is None for r in replies] == [True] * 5 + [False]
    open_ended = replies[-1]
    assert open_ended["accuracy"] == pytest.approx(open_ended["bmas_forward"] + open_ended["bmas_backward"])
    assert [r["reward"] for r in replies] == [r["accuracy"] + r["format"] for r in replies]


def test_same_rewards_as_score(server):
    _, rewards = slime_rewards(server.url + "/slime", SAMPLES)
    items = []
    for response, label, _ in SAMPLES:
        label = json.loads(label) if isinstance(label, str) else label
        truth = next(label[k] for k in ("ground_truth", "answer", "solution") if k in label)
        items.append({"response": response, "ground_truth": truth, "task_type": label["task_type"]})
    direct = httpx.post(server.url + "/score", json={"items": items}, timeout=30).json()
    assert rewards == [row["reward"] for row in direct["results"]]


def test_group_as_a_list(server):
    body = [{"prompt": PROMPT, "response": r, "label": label} for r, label, _ in SAMPLES]
    response = httpx.post(server.url + "/slime", json=body, timeout=30)
    assert response.status_code == 200
    replies = response.json()
    assert isinstance(replies, list) and [r["reward"] for r in replies] == [s[2] for s in SAMPLES]
    assert all(set(r) == KEYS for r in replies)
    assert httpx.post(server.url + "/slime", json=[], timeout=30).json() == []


def test_plain_label_with_task_type_in_the_url(server):
    _, rewards = slime_rewards(server.url + "/slime?task_type=yes_no", [(THINK + "<answer>Yes</answer>", "yes", 2.0)])
    assert rewards == [2.0]


def test_trailing_eos_is_not_held_against_format(server):
    _, rewards = slime_rewards(server.url + "/slime", [(THINK + "<answer>yes</answer><|im_end|>", SAMPLES[0][1], 2.0)])
    assert rewards == [2.0]


def test_url_options_format_weight(server):
    _, rewards = slime_rewards(server.url + "/slime?format_weight=0.5", SAMPLES[:1])
    assert rewards == [1.5]


@pytest.mark.parametrize(
    ("body", "item", "field", "message"),
    [
        ({"prompt": "p", "response": "<answer>yes</answer>", "label": None}, None, "label", "null"),
        ({"prompt": "p", "response": "<answer>yes</answer>", "label": "yes"}, None, "label", "task_type"),
        ({"prompt": "p", "response": "x", "label": "{not json"}, None, "label", "does not parse"),
        ({"prompt": "p", "label": "yes"}, None, "response", "Field required"),
        ({"response": "x", "label": {"ground_truth": "yes", "task_type": "dance"}}, None, "label", "task_type"),
        ([{"response": "x", "label": {"ground_truth": "y", "task_type": "yes_no"}}, {"response": 3, "label": "y"}],
         1, "response", "string"),
        ("just text", None, "body", "JSON object"),
    ],
)
def test_bad_samples_are_422_naming_the_field(server, body, item, field, message):
    response = httpx.post(server.url + "/slime", json=body, timeout=30)
    assert response.status_code == 422
    detail = response.json()["error"]["details"][0]
    assert (detail["item"], detail["field"]) == (item, field)
    assert message in detail["message"]


def test_aiohttp_raises_for_a_rejected_sample_so_slime_retries_and_fails_loudly(server):
    with pytest.raises(aiohttp.ClientResponseError) as caught:
        slime_rewards(server.url + "/slime", [("<answer>yes</answer>", None, 0.0)])
    assert caught.value.status == 422


def test_token_in_the_url(default_table):
    with running_server(default_table, api_token="s3cret") as srv:
        sample = [(THINK + "<answer>yes</answer>", SAMPLES[0][1], 2.0)]
        with pytest.raises(aiohttp.ClientResponseError) as caught:
            slime_rewards(srv.url + "/slime", sample)
        assert caught.value.status == 401
        assert slime_rewards(srv.url + "/slime?token=s3cret", sample)[1] == [2.0]


def test_label_prompt_id_reaches_the_posterior(default_table, tmp_path):
    """`prompt_id` in the label object (a dict or its JSON text, as slime's label column holds it),
    per sample with remote_rm and as a posted group: the service's posterior counts each prompt's
    samples. slime posts nothing else per sample, so the label is where it goes."""
    plan = {"slime-a": [True, False, True], 4: [False, False, True]}

    def samples(pid, as_text):
        label = {"ground_truth": "yes", "task_type": "yes_no", "prompt_id": pid}
        sent = json.dumps(label) if as_text else label
        return [(THINK + f"<answer>{'yes' if ok else 'no'}</answer>", sent, 0.0) for ok in plan[pid]]

    with running_server(default_table, state_path=str(tmp_path / "state.db")) as srv:
        slime_rewards(srv.url + "/slime", samples("slime-a", as_text=True))
        group = [{"prompt": PROMPT, "response": r, "label": sent} for r, sent, _ in samples(4, as_text=False)]
        httpx.post(srv.url + "/slime", json=group, timeout=30).raise_for_status()
        for pid, outcomes in plan.items():
            assert prompt_counts(srv.url, str(pid)) == (len(outcomes), sum(outcomes))
        for bad, message in ((1.5, "string or an integer"), (" ", "blank")):
            body = {"prompt": PROMPT, "response": "<answer>yes</answer>",
                    "label": {"ground_truth": "yes", "task_type": "yes_no", "prompt_id": bad}}
            response = httpx.post(srv.url + "/slime", json=body, timeout=30)
            detail = response.json()["error"]["details"][0]
            assert response.status_code == 422 and (detail["item"], detail["field"]) == (None, "label")
            assert message in detail["message"]


FAMILIES = [  # (response, label, expected reward)
    (MATH_RESPONSE, {"ground_truth": MATH_TRUTH, "task_type": "math"}, 2.0),
    (TEMPORAL_RESPONSE, json.dumps({"answer": TEMPORAL_TRUTH, "task_type": "temporal_grounding"}), 2.0),
    ("<answer>4 - 8</answer>", {"solution": TEMPORAL_TRUTH, "task_type": "video_grounding"}, 2 / 6),
]


def test_remote_rm_carries_math_and_temporal_labels_with_the_same_keys(server):
    replies, rewards = slime_rewards(server.url + "/slime", FAMILIES)
    assert rewards == pytest.approx([s[2] for s in FAMILIES])
    assert all(set(r) == KEYS for r in replies)  # sub-scores are not keys of some replies only
    assert [r["task_type"] for r in replies] == ["math", "temporal_grounding", "temporal_grounding"]
    assert replies[2]["accuracy"] == pytest.approx(2 / 6) and replies[2]["bmas_forward"] is None


def test_model_and_job_in_the_rm_url(default_table, tmp_path):
    """``--rm-url "http://host:8000/slime?model=policy-b&job=exp2"``: slime posts to the URL as
    given, so the query picks the table that scores and the job whose state learns."""
    item = {"response": W_RESPONSE, "ground_truth": W_TRUTH, "task_type": "open_ended"}
    label = {"ground_truth": "yes", "task_type": "yes_no", "prompt_id": "sl"}
    samples = [(W_RESPONSE, {"ground_truth": W_TRUTH, "task_type": "open_ended"}, 0.0),
               (THINK + "<answer>yes</answer>", label, 0.0), (THINK + "<answer>no</answer>", json.dumps(label), 0.0)]
    with tenancy_server(default_table, tmp_path) as srv:
        on_b = direct_rewards(srv.url, [item], model=POLICY_B)[0]
        assert on_b != direct_rewards(srv.url, [item])[0]
        _, rewards = slime_rewards(f"{srv.url}/slime?model={POLICY_B}&job={JOB}", samples)
        assert rewards == [on_b, 2.0, 1.0]
        assert prompt_counts(srv.url, "sl", job=JOB) == (2, 1) and prompt_missing(srv.url, "sl")
