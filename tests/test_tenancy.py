"""Several policies and several training jobs on one service (SPEC §15): named tables, residency
and eviction, fair per-job queues, per-job bounds and tokens. Tables are built in the test: two with
the same tokenizer and different rows, one with another tokenizer (the same words map to other ids)."""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from checkpoints import build_bert_checkpoint, build_decoder_checkpoint, token_text
from serving import running_server
from tokenizers import Tokenizer, models, pre_tokenizers

from reward_server.embeddings.loader import load_table


def words(ids: list[int]) -> str:
    return " ".join(token_text(i) for i in ids)


def permute_tokenizer(directory: Path, vocab: int) -> None:
    """Another tokenizer for the same words: w{i} -> id vocab-1-(i-5) (ids 0-4 stay the specials)."""
    mapping = {f"[{name}]": i for i, name in enumerate(("PAD", "UNK", "CLS", "SEP", "MASK"))}
    mapping.update({token_text(i): vocab - 1 - (i - 5) for i in range(5, vocab)})
    tokenizer = Tokenizer(models.WordLevel(vocab=mapping, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(directory / "tokenizer.json"))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tables")
    a = build_decoder_checkpoint(root / "policy-a", vocab=400, dim=16, seed=1).path
    b = build_decoder_checkpoint(root / "policy-b", vocab=400, dim=16, seed=2).path  # same tokenizer, other rows
    c = build_bert_checkpoint(root / "policy-c", vocab=300, dim=24, seed=3).path
    permute_tokenizer(c, 300)  # another tokenizer
    return {"a": a, "b": b, "c": c}


def open_items(rng: random.Random, count: int, vocab: int = 290) -> list[dict[str, Any]]:
    items = []
    for k in range(count):
        truth = [rng.randrange(5, vocab) for _ in range(rng.randint(2, 9))]
        response = [rng.choice(truth) if rng.random() < 0.5 else rng.randrange(5, vocab) for _ in range(rng.randint(1, 12))]
        items.append({"id": k, "response": f"<think>t</think><answer>{words(response)}</answer>",
                      "ground_truth": words(truth), "task_type": "open_ended", "group_id": f"g{k // 4}"})
    items.append({"id": "rule", "response": "<answer>yes</answer>", "ground_truth": "yes", "task_type": "yes_no"})
    return items


def test_every_table_scores_as_a_single_table_server_would(checkpoints: dict[str, Path], default_table) -> None:
    """200 interleaved concurrent requests across three named tables (and the default), with room
    for only two tables in memory: every reward equals a one-table server's on that table."""
    rng = random.Random(7)
    requests = [(rng.choice(["a", "b", "c", None]), open_items(rng, rng.randint(1, 6))) for _ in range(200)]
    expected: dict[str | None, dict[int, list[float]]] = {}
    for name in ("a", "b", "c", None):
        table = default_table if name is None else load_table(checkpoints[name], device="cpu")
        with running_server(table) as single, httpx.Client(base_url=single.url, timeout=120) as client:
            for index, (model, items) in enumerate(requests):
                if model == name:
                    body = client.post("/score", json={"items": items}).json()
                    expected.setdefault(name, {})[index] = [r["reward"] for r in body["results"]]

    flags = [f"{name}={path}" for name, path in checkpoints.items()]
    with running_server(default_table, table=flags, max_resident_tables=2) as multi:

        async def main() -> list[dict[str, Any]]:
            async with httpx.AsyncClient(base_url=multi.url, timeout=300) as client:
                async def one(model: str | None, items: list[dict[str, Any]]) -> dict[str, Any]:
                    body: dict[str, Any] = {"items": items}
                    if model is not None:
                        body["model"] = model
                    response = await client.post("/score", json=body)
                    assert response.status_code == 200, response.text
                    return response.json()

                return await asyncio.gather(*(one(model, items) for model, items in requests))

        answers = asyncio.run(main())
        info = httpx.get(multi.url + "/v1/info").json()
    for index, ((model, _), answer) in enumerate(zip(requests, answers)):
        got = [r["reward"] for r in answer["results"]]
        assert got == pytest.approx(expected[model][index], abs=1e-6), (index, model)
        assert answer["table"]["name"] == (model or "default")
    assert any(answer["timing"]["table_load_seconds"] > 0 for answer in answers)  # some waited for a load
    tables = {t["name"]: t for t in info["tables"]}
    assert set(tables) == {"default", "a", "b", "c"}
    assert sum(t["resident"] for t in tables.values()) <= 2
    assert sum(t["loads"] for t in tables.values()) > 4  # evicted and loaded again


def test_an_unknown_model_is_a_422_listing_the_names(checkpoints: dict[str, Path], default_table) -> None:
    with running_server(default_table, table=[f"a={checkpoints['a']}"]) as server:
        item = {"response": "yes", "ground_truth": "yes", "task_type": "yes_no"}
        for body, params in (({"items": [item], "model": "nope"}, None), ({"items": [item]}, {"model": "nope"})):
            error = httpx.post(server.url + "/score", json=body, params=params).json()["error"]
            assert error["type"] == "unknown_model"
            assert error["details"] == [{"item": None, "field": "model", "message": error["details"][0]["message"]}]
            assert "unknown model 'nope'; loaded: default" in error["message"] and "loadable: a" in error["message"]
        assert httpx.post(server.url + "/score", json={"items": [item], "model": "a"}).status_code == 200


def test_a_job_over_its_bound_gets_429_and_the_other_jobs_do_not(default_table) -> None:
    """--job-queue-items 8; the batcher waits half a second before each batch, so the flood's 40
    concurrent requests of 4 items queue up together: most of them are refused, the other job's
    requests of 2 items never are."""
    item = {"response": "<answer>yes</answer>", "ground_truth": "yes", "task_type": "yes_no"}
    with running_server(default_table, job_queue_items=8, batch_max_wait_ms=500.0) as server:

        async def main() -> tuple[list[httpx.Response], list[httpx.Response]]:
            async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
                flood = [client.post("/score", json={"items": [item] * 4, "job": "flood"}) for _ in range(40)]
                calm = [client.post("/score", json={"items": [item] * 2}, headers={"X-Reward-Job": "calm"})
                        for _ in range(3)]
                answers = await asyncio.gather(*flood, *calm)
                return list(answers[:40]), list(answers[40:])

        flood, calm = asyncio.run(main())
    refused = [r for r in flood if r.status_code == 429]
    assert len(refused) >= 30 and all(r.status_code in (200, 429) for r in flood)
    assert refused[0].json()["error"]["type"] == "overloaded" and "job 'flood'" in refused[0].json()["error"]["message"]
    assert refused[0].headers["retry-after"] == "1"
    assert [r.status_code for r in calm] == [200, 200, 200]
    assert all(r.json()["job"] == "calm" for r in calm)


def test_a_job_token_acts_only_as_its_job(default_table, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({
        "token-of-job-a": {"job": "a", "scopes": ["score", "state"]},
        "token-of-job-b": {"job": "b", "scopes": ["score"]},
        "token-of-admin": {"job": "ops", "scopes": ["admin"]},
    }))
    item = {"response": "yes", "ground_truth": "yes", "task_type": "yes_no"}
    with running_server(default_table, tokens_file=str(tokens), state_path=str(tmp_path / "state.db")) as server:
        url = server.url + "/score"

        def post(token: str | None, body: dict[str, Any], **kwargs: Any) -> httpx.Response:
            headers = {**kwargs.pop("headers", {}), **({"authorization": f"Bearer {token}"} if token else {})}
            return httpx.post(url, json=body, headers=headers, **kwargs)

        assert post(None, {"items": [item]}).status_code == 401
        mine = post("token-of-job-a", {"items": [item]})
        assert mine.status_code == 200 and mine.json()["job"] == "a"  # the token's job
        assert post("token-of-job-a", {"items": [item], "job": "a"}).status_code == 200
        for attempt in (post("token-of-job-a", {"items": [item], "job": "b"}),
                        post("token-of-job-a", {"items": [item]}, params={"job": "b"}),
                        post("token-of-job-a", {"items": [item]}, headers={"X-Reward-Job": "b"})):
            error = attempt.json()["error"]
            assert attempt.status_code == 403 and error["type"] == "forbidden" and "'a', not 'b'" in error["message"]
        state = httpx.get(server.url + "/v1/prompts", headers={"authorization": "Bearer token-of-job-b"})
        assert state.status_code == 403 and state.json()["error"]["type"] == "forbidden"  # no state scope
        admin = httpx.post(server.url + "/admin/reload", json={}, headers={"authorization": "Bearer token-of-job-a"})
        assert admin.status_code == 403  # the admin API is on (an admin token exists), this token lacks the scope
        bad = httpx.post(url, json={"items": [item], "job": "no spaces"},
                         headers={"authorization": "Bearer token-of-job-a"}).json()["error"]
        assert bad["type"] == "invalid_request" and bad["details"][0]["field"] == "job"


def test_pinned_tables_load_at_start_evicted_ones_stay_listed_and_any_table_reloads(
    checkpoints: dict[str, Path], default_table,
) -> None:
    """--pin loads a table as the service starts and never evicts it; an evicted table keeps its
    hash, source and bytes in /v1/info; /admin/reload works on a table out of memory (and says
    what it replaced); a request's table_load_seconds is the load, not the batch wait after it."""
    flags = [f"a={checkpoints['a']}", f"b={checkpoints['b']}"]
    with running_server(default_table, table=flags, max_resident_tables=2, pin=["a"], admin_token="adm",
                        batch_max_wait_ms=1000.0) as server:
        def tables() -> dict[str, dict[str, Any]]:
            return {t["name"]: t for t in httpx.get(server.url + "/v1/info").json()["tables"]}

        for _ in range(300):
            if tables()["a"]["resident"]:
                break
            time.sleep(0.1)
        listed = tables()
        assert listed["a"]["resident"] and listed["a"]["pinned"] and listed["a"]["loads"] == 1  # before any request
        default_hash = listed["default"]["content_hash"]

        item = open_items(random.Random(3), 1)[0]
        answer = httpx.post(server.url + "/score", json={"items": [item], "model": "b"}, timeout=60).json()
        listed = tables()
        assert answer["table"]["name"] == "b" and listed["b"]["resident"]
        assert 0 < answer["timing"]["table_load_seconds"] < 0.8  # the load, not the 1 s batch wait after it
        assert listed["a"]["resident"]  # pinned: the least recently used *unpinned* table went
        evicted = listed["default"]
        assert not evicted["resident"] and evicted["content_hash"] == default_hash
        assert evicted["bytes"] == 30522 * 384 * 4 and evicted["source"]
        ready = httpx.get(server.url + "/readyz")  # still ready: it answers for the tables it holds
        assert ready.status_code == 200 and ready.json()["table"]["resident"] is False
        assert ready.json()["table"]["content_hash"] == default_hash

        admin = {"authorization": "Bearer adm"}
        reloaded = httpx.post(server.url + "/admin/reload", json={}, headers=admin, timeout=120)
        assert reloaded.status_code == 200, reloaded.text
        assert reloaded.json()["previous"]["content_hash"] == default_hash  # as when last in memory
        assert reloaded.json()["current"]["content_hash"] == default_hash
        assert tables()["default"]["resident"]
        again = httpx.post(server.url + "/admin/reload", json={"model": "b", "model_path": str(checkpoints["a"])},
                           headers=admin, timeout=120).json()
        assert again["previous"]["content_hash"] == listed["b"]["content_hash"] != again["current"]["content_hash"]


def test_more_pins_than_resident_tables_is_a_start_up_error(checkpoints: dict[str, Path], default_table) -> None:
    from reward_server.errors import UsageError

    flags = [f"a={checkpoints['a']}", f"b={checkpoints['b']}"]
    with (pytest.raises(UsageError, match=r"--pin names 2 tables \(a, b\) but --max-resident-tables is 1"),
          running_server(default_table, table=flags, max_resident_tables=1, pin=["a", "b"])):
        pass


def test_the_job_label_is_bounded_and_the_rest_count_as_other(default_table) -> None:
    """--max-job-labels 2: `default` and the first job seen keep their own series; every later job
    is counted, under `other`, so a client inventing job names cannot grow the metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    item = {"response": "<answer>yes</answer>", "ground_truth": "yes", "task_type": "yes_no"}
    with running_server(default_table, max_job_labels=2) as server:
        for job, count in (("j1", 1), ("j2", 2), ("j3", 3), ("j1", 4)):
            assert httpx.post(server.url + "/score", json={"items": [item] * count, "job": job}).status_code == 200
        text = httpx.get(server.url + "/metrics").text
    scored: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "reward_items":
            for sample in family.samples:
                if sample.name == "reward_items_total" and sample.labels["outcome"] == "scored":
                    job = sample.labels["job"]
                    scored[job] = scored.get(job, 0.0) + sample.value
    assert {job: value for job, value in scored.items() if value} == {"j1": 5.0, "other": 5.0}
    assert set(scored) <= {"default", "j1", "other"}
