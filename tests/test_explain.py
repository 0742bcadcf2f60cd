"""``options.explain`` (SPEC §14): ``parsed`` on every result, and not one number changed."""

from __future__ import annotations

import httpx

ITEMS = [
    {"response": "<think>t</think><answer>yes</answer>", "ground_truth": "yes", "task_type": "yes_no"},
    {"response": "<answer>The answer is (B).</answer>", "ground_truth": "B", "task_type": "mcq"},
    {"response": "<answer>$1,200</answer>", "ground_truth": "1200", "task_type": "chart"},
    {"response": "<answer>[10, 10, 50, 60]</answer>", "ground_truth": [12, 10, 50, 60], "task_type": "grounding"},
    {"response": "<answer>A small dog sleeps on the red sofa quietly.</answer>",
     "ground_truth": "A small dog sleeps on a red couch.", "task_type": "open_ended"},
    {"response": "<answer>\\boxed{\\frac{1}{2}}</answer>", "ground_truth": "0.5", "task_type": "math"},
    {"response": "<answer>from 2 to 6.5 seconds</answer>", "ground_truth": {"segment": [2, 6]},
     "task_type": "temporal_grounding"},
    {"response": "<answer>Eifel Tower</answer>", "ground_truth": ["Eiffel Tower"], "task_type": "ocr"},
    {"response": "<answer>three dogs</answer>", "ground_truth": 3, "task_type": "counting"},
    {"response": "<answer>(25, 30)</answer>", "ground_truth": [10, 10, 40, 40], "task_type": "point"},
]
NUMBERS = ("reward", "accuracy", "format", "bmas_forward", "bmas_backward", "tiou", "boundary_penalty")


def test_explain_adds_parsed_and_changes_no_number(server) -> None:
    plain = httpx.post(server.url + "/score", json={"items": ITEMS}, timeout=120).json()["results"]
    explained = httpx.post(server.url + "/score", json={"items": ITEMS, "options": {"explain": True}},
                           timeout=120).json()["results"]
    for without, with_ in zip(plain, explained):
        assert "parsed" not in without
        assert {k: without.get(k) for k in NUMBERS} == {k: with_.get(k) for k in NUMBERS}, with_["task_type"]
    parsed = {r["task_type"]: r["parsed"] for r in explained}
    assert parsed["yes_no"] == "yes" and parsed["mcq"] == "B" and parsed["chart"] == 1200.0
    assert parsed["grounding"] == [[10.0, 10.0, 50.0, 60.0]]
    assert parsed["counting"] == 3 and parsed["point"] == [25.0, 30.0]
    weakest = parsed["open_ended"]
    # the five distinct response tokens whose best match in the truth is weakest, weakest first
    assert len(weakest) == 5 and len({w["token"] for w in weakest}) == 5
    similarities = [w["similarity"] for w in weakest]
    assert similarities == sorted(similarities) and all(-1.0 <= s <= 1.0 for s in similarities)
    assert "quietly" in {w["token"] for w in weakest}  # the one word the truth has nothing close to
    assert {"dog", "small", "red"}.isdisjoint(w["token"] for w in weakest)  # in the truth: similarity 1


def test_an_exact_open_ended_answer_has_nothing_weak(server) -> None:
    item = {"response": "<answer>a red dog</answer>", "ground_truth": "a red dog", "task_type": "open_ended"}
    (result,) = httpx.post(server.url + "/score", json={"items": [item], "options": {"explain": True}}).json()["results"]
    assert result["accuracy"] == 2.0
    assert [w["similarity"] for w in result["parsed"]] == [1.0, 1.0, 1.0]
