"""Trainer-side samplers against the real server: plain Python and verl's dataloader code path;
the reward clients' prompt ids, and their idempotency keys through a failover after a lost answer."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from mixed_reward_client import AsyncRewardClient, RetryPolicy, RewardClient
from mixed_reward_client.sampler import VadeSampler, VerlVadeSampler
from serving import running_server
from test_trainer_support import prompt_counts


@pytest.fixture(scope="module")
def diff_server(default_table, tmp_path_factory):
    path = tmp_path_factory.mktemp("clients") / "state.db"
    with running_server(default_table, state_path=str(path)) as srv:
        # prompt "0" is always solved, "1" never; the rest are unseen
        items = [{"response": f"<answer>{a}</answer>", "ground_truth": "yes", "task_type": "yes_no", "prompt_id": p}
                 for p, a in (("0", "yes"), ("1", "no")) for _ in range(40)]
        httpx.post(srv.url + "/score", json={"items": items}).raise_for_status()
        yield srv


def test_plain_sampler_avoids_dead_prompts(diff_server) -> None:
    sampler = VadeSampler(diff_server.url, [str(i) for i in range(6)], batch_size=4, seed=1)
    batches = [sampler.next_batch() for _ in range(20)]
    assert all(len(set(b)) == 4 for b in batches)
    picked = [pid for b in batches for pid in b]
    assert picked.count("0") + picked.count("1") < picked.count("2") + picked.count("3")
    assert sampler.next_indices() and sampler.step == 21
    sampler.close()


def test_verl_dataloader_iterates_the_sampler(diff_server) -> None:
    pytest.importorskip("torchdata")
    from omegaconf import OmegaConf
    from verl.trainer.ppo.ray_trainer import RayPPOTrainer

    dataset = [{"row": i} for i in range(8)]
    sampler = VerlVadeSampler(dataset, diff_server.url, batch_size=4, seed=3, job="verl-run")
    config = OmegaConf.create({
        "data": {"dataloader_num_workers": 0, "train_batch_size": 4, "gen_batch_size": None,
                 "val_batch_size": None, "validation_shuffle": False},
        "trainer": {"total_epochs": 1, "total_training_steps": None},
    })
    trainer = SimpleNamespace(config=config)
    # verl's own dataloader construction, with our sampler as train_sampler
    RayPPOTrainer._create_dataloader(trainer, dataset, dataset, lambda rows: [r["row"] for r in rows], sampler)
    batches = list(trainer.train_dataloader)
    assert len(batches) == 2 and all(len(set(b)) == 4 for b in batches)
    state = trainer.train_dataloader.state_dict()
    assert trainer.total_training_steps == 2 and state
    # its pool (the 8 rows) was registered for its job, not for the default job's pool "train"
    pool = httpx.post(diff_server.url + "/v1/sample?job=verl-run", json={"pool": "train", "k": 8}).json()
    assert sorted(pool["prompt_ids"]) == [str(i) for i in range(8)]


def test_client_package_stays_torch_free() -> None:
    code = "import sys, mixed_reward_client.sampler; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_reward_clients_send_prompt_ids(default_table, tmp_path) -> None:
    """RewardClient and AsyncRewardClient items carry prompt_id (any int or str, numpy too) to the
    posterior, also when a batch is split into several requests."""

    def rollouts(prompt_id, answers):
        return [{"response": f"<answer>{a}</answer>", "ground_truth": "yes", "task_type": "yes_no",
                 "prompt_id": prompt_id, "group_id": str(prompt_id)} for a in answers]

    sync_items = rollouts("sync-a", ["yes", "no", "yes"]) + rollouts(np.int64(41), ["no", "no"])
    without_id = {**rollouts(None, ["yes"])[0], "group_id": 9}
    async_items = rollouts("async-a", ["yes", "yes", "yes", "no"]) + [without_id]
    with running_server(default_table, state_path=str(tmp_path / "state.db")) as srv:
        with RewardClient(srv.url, max_batch_items=2) as client:
            assert client.score(sync_items).requests == 3

        async def main():
            async with AsyncRewardClient(srv.url) as client:
                return await client.score(async_items)

        asyncio.run(main())
        assert prompt_counts(srv.url, "sync-a") == (3, 2)
        assert prompt_counts(srv.url, "41") == (2, 0)  # 41 and "41" are the same prompt
        assert prompt_counts(srv.url, "async-a") == (4, 3)
        assert len(httpx.get(srv.url + "/v1/prompts").text.splitlines()) == 3  # the item without one: none


def test_the_sampler_reads_the_posteriors_of_its_job(diff_server) -> None:
    """Job "vade-j" has the opposite history of the default job: "2" and "3" dead, "0" and "1" unseen.
    The same sampler code, given job=, avoids the prompts dead *for its job* and registers its pool
    there; without job= it reads the default job's."""
    items = [{"response": f"<answer>{a}</answer>", "ground_truth": "yes", "task_type": "yes_no", "prompt_id": p}
             for p, a in (("2", "yes"), ("3", "no")) for _ in range(40)]
    httpx.post(diff_server.url + "/score?job=vade-j", json={"items": items}).raise_for_status()
    picked = {}
    for job in ("vade-j", None):
        sampler = VadeSampler(diff_server.url, [str(i) for i in range(6)], batch_size=4, seed=1, pool="jobs", job=job)
        picked[job] = [pid for _ in range(20) for pid in sampler.next_batch()]
        sampler.close()
    assert picked["vade-j"].count("2") + picked["vade-j"].count("3") < picked["vade-j"].count("0") + picked[
        "vade-j"].count("1")
    assert picked[None].count("0") + picked[None].count("1") < picked[None].count("2") + picked[None].count("3")
    only_j = httpx.post(diff_server.url + "/v1/sample?job=vade-j", json={"pool": "jobs", "k": 6}).json()
    assert sorted(only_j["prompt_ids"]) == ["0", "1", "2", "3", "4", "5"] and only_j["job"] == "vade-j"
    unregistered = httpx.post(diff_server.url + "/v1/sample?job=vade-other", json={"pool": "jobs", "k": 1})
    assert unregistered.status_code == 404


@contextmanager
def forwarding_proxy(target: str, lose_answers: bool) -> Iterator[tuple[str, list[str]]]:
    """A real HTTP proxy on a loopback port that sends each request on to ``target`` (the real
    service, which scores it and commits its state update) and then either relays the answer or,
    with ``lose_answers``, answers 502 instead: a replica that died after the commit, before its
    answer reached the trainer. Yields (url, the Idempotency-Key of every request it forwarded)."""
    keys: list[str] = []
    upstream = httpx.Client(base_url=target, timeout=60)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            keys.append(self.headers.get("idempotency-key", ""))
            sent = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "idempotency-key")}
            answer = upstream.post(self.path, content=body, headers=sent)
            status, content = (502, b"upstream went away") if lose_answers else (answer.status_code, answer.content)
            self.send_response(status)
            self.send_header("content-length", str(len(content)))
            self.send_header("content-type", "application/json" if status == 200 else "text/plain")
            self.end_headers()
            self.wfile.write(content)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", keys
    finally:
        server.shutdown()
        server.server_close()
        upstream.close()


def test_a_lost_answer_retried_on_another_url_counts_once(default_table, tmp_path) -> None:
    """Each request reaches the service through the first URL, is scored and committed, and its
    answer is lost (502); the client fails over to the second URL, which reaches the same service,
    with the same Idempotency-Key: every rollout counts exactly once, for both clients, also when a
    batch goes out as several requests (one key per request)."""
    def rollouts(prompt_id: str, answers: str) -> list[dict]:
        return [{"response": f"<answer>{'yes' if a == 'y' else 'no'}</answer>", "ground_truth": "yes",
                 "task_type": "yes_no", "prompt_id": prompt_id} for a in answers]

    retry = RetryPolicy(failback_after=0.0, backoff=0.05)  # every request tries the lossy URL first
    with running_server(default_table, state_path=str(tmp_path / "state.db")) as srv, \
            forwarding_proxy(srv.url, lose_answers=True) as (lossy, lost), \
            forwarding_proxy(srv.url, lose_answers=False) as (relay, relayed):
        with RewardClient([lossy, relay], retry=retry, max_batch_items=3) as client:
            batch = client.score(rollouts("sync", "yyn") + rollouts("sync", "nny"))
        assert batch.requests == 2 and [r["accuracy"] for r in batch.results] == [1, 1, 0, 0, 0, 1]

        async def main():
            async with AsyncRewardClient([lossy, relay], retry=retry, max_batch_items=2) as client:
                return await client.score(rollouts("async", "yyyn"))

        assert asyncio.run(main()).requests == 2
        assert prompt_counts(srv.url, "sync") == (6, 3) and prompt_counts(srv.url, "async") == (4, 3)
        # each request: one key, sent first through the lossy URL and again, unchanged, to the other
        assert len(lost) == 4 and sorted(lost) == sorted(relayed) and len(set(lost)) == 4
        assert all(re.fullmatch(r"[0-9a-f]{32}", key) for key in lost)
        # the same lost answer without a key (a client that sends none) is counted twice
        body = {"items": rollouts("keyless", "y")}
        assert httpx.post(lossy + "/score", json=body).status_code == 502
        httpx.post(relay + "/score", json=body).raise_for_status()
        assert prompt_counts(srv.url, "keyless") == (2, 2)
