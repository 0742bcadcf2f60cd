"""The real server over real HTTP: one item of each task type, a mixed batch of 64, options, groups.

Expected values are worked out from SPEC.md in the test itself. Open-ended expectations come from
an independent BMAS: the raw tensor read straight from the default checkpoint's safetensors file,
normalised here, tokenized with a fresh `tokenizers.Tokenizer`, and the formula applied pair by pair.
"""

from __future__ import annotations

import math
from functools import lru_cache

import httpx
import pytest
import torch
from safetensors import safe_open
from tokenizers import Tokenizer

from reward_server.embeddings.default import default_checkpoint_dir

THINK = "<think>Looking at the image carefully.</think>"


def wrap(answer: str) -> str:
    return f"{THINK}<answer>{answer}</answer>"


@lru_cache(maxsize=1)
def _independent_table() -> tuple[torch.Tensor, Tokenizer]:
    directory = default_checkpoint_dir()
    with safe_open(str(directory / "model.safetensors"), "pt") as f:
        weight = f.get_tensor("embeddings.word_embeddings.weight").float()
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return torch.nn.functional.normalize(weight, dim=1), tokenizer


def independent_bmas(response_span: str, truth: str) -> float:
    """SPEC §6 by the letter: S = R Gᵀ over unit rows, row-max mean plus column-max mean."""
    weight, tokenizer = _independent_table()
    r = tokenizer.encode(response_span, add_special_tokens=False).ids
    g = tokenizer.encode(truth, add_special_tokens=False).ids
    if not r or not g:
        return 0.0
    sim = weight[r] @ weight[g].T
    return float(sim.max(dim=1).values.mean() + sim.max(dim=0).values.mean())


# (item, expected accuracy, expected format) — accuracy values worked out from SPEC §3-§6.
ONE_OF_EACH = [
    ({"response": wrap("Yes, there is a dog."), "ground_truth": "yes", "task_type": "yes_no"}, 1.0, 1.0),
    ({"response": wrap("I know it is not."), "ground_truth": "no", "task_type": "yorn"}, 0.0, 1.0),
    ({"response": wrap("I know: no, nothing there."), "ground_truth": "No.", "task_type": "binary"}, 1.0, 1.0),
    ({"response": "<answer>(A) 3 cm</answer>", "ground_truth": "C", "task_type": "multiple_choice"}, 0.0, 0.0),
    ({"response": wrap("The answer is (C)."), "ground_truth": "C. 5 cm", "task_type": "MCQ"}, 1.0, 1.0),
    ({"response": wrap("12,000"), "ground_truth": "12000", "task_type": "chart"}, 1.0, 1.0),
    ({"response": wrap("45%"), "ground_truth": 0.45, "task_type": "ChartQA"}, 1.0, 1.0),
    ({"response": wrap("$1,240.5"), "ground_truth": "1250", "task_type": "numeric"}, 1.0, 1.0),
    ({"response": wrap("1300"), "ground_truth": "1250", "task_type": "numeric"}, 0.0, 1.0),
    # [0,0,10,10] vs [5,0,15,10]: intersection 50, union 150.
    ({"response": wrap("[0, 0, 10, 10]"), "ground_truth": [5, 0, 15, 10], "task_type": "grounding"}, 1 / 3, 1.0),
    # Swapped corners are re-ordered: identical box.
    ({"response": wrap("[10.0, 10.0, 0.0, 0.0]"), "ground_truth": "[0,0,10,10]", "task_type": "bbox"}, 1.0, 1.0),
    # Two truths, three predictions, two exact: (1 + 1 + 0) / max(3, 2).
    (
        {
            "response": wrap('[{"bbox_2d": [0,0,10,10]}, {"bbox_2d": [20,20,30,30]}, {"bbox_2d": [50,50,60,60]}]'),
            "ground_truth": [[20, 20, 30, 30], [0, 0, 10, 10]],
            "task_type": "detection",
        },
        2 / 3,
        1.0,
    ),
    ({"response": "no box here", "ground_truth": [0, 0, 10, 10], "task_type": "rec"}, 0.0, 0.0),
    ({"response": wrap("A brown dog runs on the beach."), "ground_truth": "<answer>A brown dog runs on the beach.</answer>",
      "task_type": "open_ended"}, 2.0, 1.0),
]


def post(url: str, payload: dict) -> httpx.Response:
    return httpx.post(url + "/score", json=payload, timeout=60)


def test_one_item_of_each_task_type(server) -> None:
    for item, accuracy, fmt in ONE_OF_EACH:
        response = post(server.url, {"items": [item]})
        assert response.status_code == 200, response.text
        (result,) = response.json()["results"]
        assert result["accuracy"] == pytest.approx(accuracy, abs=1e-6), item
        assert result["format"] == fmt, item
        assert result["reward"] == pytest.approx(accuracy + fmt, abs=1e-6), item


def test_open_ended_matches_independent_bmas(server) -> None:
    truth = "A small white dog is sleeping on a red sofa next to a window."
    responses = [
        wrap("A white puppy sleeps on a red couch near the window."),
        wrap("A cat."),
        "Two people are riding bicycles down a busy street at night.",
        wrap("A small white dog is sleeping on a red sofa next to a window. " * 3),
    ]
    items = [{"response": r, "ground_truth": truth, "task_type": "caption", "group_id": 7} for r in responses]
    body = post(server.url, {"items": items}).json()
    for response, result in zip(responses, body["results"]):
        span = response.split("<answer>")[1].split("</answer>")[0] if "<answer>" in response else response
        expected = independent_bmas(span, truth)
        assert result["accuracy"] == pytest.approx(expected, abs=1e-5)
        assert result["bmas_forward"] + result["bmas_backward"] == pytest.approx(expected, abs=1e-5)
    # The repeated truth covers every truth token and only truth tokens: exactly 2.
    assert body["results"][3]["accuracy"] == 2.0
    # A paraphrase scores between the unrelated answer and the exact one.
    assert body["results"][2]["accuracy"] < body["results"][0]["accuracy"] < 2.0


def test_mixed_batch_of_64(server) -> None:
    items, expected = [], []
    cases = ONE_OF_EACH
    for i in range(64):
        item, accuracy, fmt = cases[i % len(cases)]
        items.append({**item, "id": f"item-{i}", "group_id": f"g{i % 8}"})
        expected.append(accuracy + fmt)
    captions = [("A man rides a horse on the beach.", "A man riding a horse along a sandy beach at sunset.")]
    for j, (resp, truth) in enumerate(captions * 4):
        items[10 + j * 13] = {"id": f"item-{10 + j * 13}", "response": resp, "ground_truth": truth,
                              "task_type": "free-form", "group_id": f"g{(10 + j * 13) % 8}"}
        expected[10 + j * 13] = independent_bmas(resp, truth)
    body = post(server.url, {"items": items}).json()
    results = body["results"]
    assert [r["id"] for r in results] == [it["id"] for it in items]
    for got, want in zip(results, expected):
        assert got["reward"] == pytest.approx(want, abs=1e-5)
        assert all(math.isfinite(v) for v in got.values() if isinstance(v, float))
    groups = {g["group_id"]: g for g in body["groups"]}
    assert set(groups) == {f"g{k}" for k in range(8)}
    for gid, stats in groups.items():
        rewards = [r["reward"] for r in results if r["group_id"] == gid]
        assert stats["size"] == len(rewards) == 8
        assert stats["mean"] == pytest.approx(sum(rewards) / 8)
        mean = sum(rewards) / 8
        assert stats["std"] == pytest.approx(math.sqrt(sum((x - mean) ** 2 for x in rewards) / 7))
        assert stats["zero_variance"] == (max(rewards) - min(rewards) <= 1e-6)
    assert body["timing"]["batch_items"] >= 64


def test_options_change_format_weight_and_reduction(server) -> None:
    item = {"response": wrap("a dog"), "ground_truth": "a dog", "task_type": "open_ended"}
    body = post(server.url, {"items": [item], "options": {"format_weight": 0.5, "bmas_reduction": "mean"}}).json()
    (result,) = body["results"]
    assert result["accuracy"] == 1.0 and result["format"] == 1.0 and result["reward"] == 1.5
    body = post(server.url, {"items": [item], "options": {"format_weight": 0}}).json()
    assert body["results"][0]["reward"] == 2.0


def test_zero_variance_group(server) -> None:
    items = [{"response": wrap("yes"), "ground_truth": "yes", "task_type": "yes_no", "group_id": "easy"}] * 4
    items += [{"response": wrap(ans), "ground_truth": "yes", "task_type": "yes_no", "group_id": "useful"}
              for ans in ("yes", "no", "yes", "no")]
    groups = {g["group_id"]: g for g in post(server.url, {"items": items}).json()["groups"]}
    assert groups["easy"] == {"group_id": "easy", "size": 4, "mean": 2.0, "std": 0.0, "min": 2.0, "max": 2.0,
                              "zero_variance": True}
    assert groups["useful"]["zero_variance"] is False
    assert groups["useful"]["mean"] == 1.5
    assert groups["useful"]["std"] == pytest.approx(math.sqrt(1 / 3))


def test_info_health_and_ready(server) -> None:
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(server.url + "/readyz").json()
    assert ready["status"] == "ready"
    info = httpx.get(server.url + "/v1/info").json()
    assert info["vocab_size"] == 30522 and info["dim"] == 384
    assert info["device"] == "cpu" and info["dtype"] == "float32"
    assert info["tensor_key"] == "embeddings.word_embeddings.weight"
    assert len(info["content_hash"]) >= 16 and info["version"]


def test_empty_batch_is_fine(server) -> None:
    body = post(server.url, {"items": []}).json()
    assert body["results"] == [] and body["groups"] == []


def test_concurrent_one_item_requests_are_coalesced(server) -> None:
    """Fifty one-item requests sent together are scored in far fewer than fifty batches."""
    import asyncio

    async def main() -> list[dict]:
        async with httpx.AsyncClient(timeout=60) as client:
            item = {"response": wrap("a dog on a sofa"), "ground_truth": "a dog on the sofa", "task_type": "caption"}
            calls = [client.post(server.url + "/score", json={"items": [{**item, "id": i}]}) for i in range(50)]
            return [r.json() for r in await asyncio.gather(*calls)]

    bodies = asyncio.run(main())
    assert [b["results"][0]["id"] for b in bodies] == list(range(50))
    assert len({b["results"][0]["reward"] for b in bodies}) == 1
    assert max(b["timing"]["batch_items"] for b in bodies) > 1


def test_openapi_documents_the_score_body(server) -> None:
    document = httpx.get(server.url + "/openapi.json").json()
    body = document["paths"]["/score"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/ScoreRequest"}
    schemas = document["components"]["schemas"]
    assert set(schemas["ScoreRequest"]["properties"]) == {"items", "options", "model", "job", "priority", "deadline_seconds"}
    assert {"response", "ground_truth", "task_type", "id", "group_id"} <= set(schemas["RequestItem"]["properties"])
    assert "ScoreResponse" in schemas and "ErrorResponse" in schemas
