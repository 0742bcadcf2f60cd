"""Trainer-side samplers against the real server: plain Python and verl's dataloader code path."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from mixed_reward_client import AsyncRewardClient, RewardClient
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
    sampler = VerlVadeSampler(dataset, diff_server.url, batch_size=4, seed=3)
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
