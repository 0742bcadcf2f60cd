"""Serving a policy checkpoint: `reward-server serve --model-path` on a Qwen2.5-VL layout, a bad path,
and swapping the table at run time without dropping a request."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch
from checkpoints import build_decoder_checkpoint, build_qwen2_5_vl_checkpoint, token_text
from serving import running_server

from reward_server.embeddings.loader import load_table


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def words(ids: list[int]) -> str:
    return " ".join(token_text(i) for i in ids)


def expected_bmas(embedding: torch.Tensor, r: list[int], g: list[int]) -> float:
    table = torch.nn.functional.normalize(embedding.float(), dim=1)
    sim = table[r] @ table[g].T
    return float(sim.max(1).values.mean() + sim.max(0).values.mean())


def test_serve_qwen2_5_vl_checkpoint_via_cli(tmp_path: Path) -> None:
    ckpt = build_qwen2_5_vl_checkpoint(tmp_path / "qwen", vocab=512, dim=32, nested=True)
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "REWARD_FORMAT_WEIGHT": "0.5"}
    proc = subprocess.Popen(
        # CPU float32 pinned: the expected scores below are float32 at 1e-5 (unset, a GPU host would
        # serve the table in bf16 on CUDA).
        [sys.executable, "-m", "reward_server", "serve", "--model-path", str(ckpt.path), "--port", str(port),
         "--device", "cpu"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.2)
        info = httpx.get(url + "/v1/info").json()
        assert info["model_type"] == "qwen2_5_vl"
        assert info["tensor_key"] == ckpt.tensor_key
        assert (info["vocab_size"], info["dim"]) == (512, 32)
        assert info["model"] == str(ckpt.path.resolve())
        assert info["defaults"]["format_weight"] == 0.5  # the environment variable reached the settings

        response_ids, truth_ids = [10, 11, 12, 300, 11], [10, 11, 12, 13]
        items = [
            {"response": f"<think>t</think><answer>{words(truth_ids)}</answer>", "ground_truth": words(truth_ids),
             "task_type": "open_ended"},
            {"response": words(response_ids), "ground_truth": words(truth_ids), "task_type": "open_ended"},
        ]
        results = httpx.post(url + "/score", json={"items": items}).json()["results"]
        assert results[0]["accuracy"] == 2.0 and results[0]["reward"] == 2.5
        assert results[1]["accuracy"] == pytest.approx(expected_bmas(ckpt.embedding, response_ids, truth_ids), abs=1e-5)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_serve_with_a_bad_model_path_fails_fast(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "reward_server", "serve", "--model-path", str(tmp_path / "missing"), "--device", "cpu"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=False,
    )
    assert result.returncode == 2
    assert "cannot load the embedding table" in result.stderr and "missing" in result.stderr


def test_reload_swaps_the_table_without_dropping_requests(tmp_path: Path, default_table) -> None:
    first = build_decoder_checkpoint(tmp_path / "step100", vocab=400, dim=16, seed=1)
    second = build_decoder_checkpoint(tmp_path / "step200", vocab=400, dim=16, seed=2)
    table = load_table(first.path, device="cpu")
    truth = words([5, 6, 7, 8])
    item = {"response": words([5, 9, 30, 31]), "ground_truth": truth, "task_type": "open_ended"}
    admin = {"authorization": "Bearer admin-secret"}

    with running_server(table, admin_token="admin-secret") as srv:
        async def hammer(client: httpx.AsyncClient, stop: asyncio.Event) -> list[dict]:
            seen = []
            while not stop.is_set():
                r = await client.post(srv.url + "/score", json={"items": [item]})
                assert r.status_code == 200, r.text
                seen.append(r.json())
            return seen

        async def main() -> tuple[list[dict], httpx.Response]:
            stop = asyncio.Event()
            async with httpx.AsyncClient(timeout=60) as client:
                workers = [asyncio.create_task(hammer(client, stop)) for _ in range(4)]
                await asyncio.sleep(0.3)
                # The new table pinned to CPU float32 like the first: scores are compared at 1e-5.
                body = {"model_path": str(second.path), "device": "cpu"}
                denied = await client.post(srv.url + "/admin/reload", json=body)
                assert denied.status_code == 401
                reload = await client.post(srv.url + "/admin/reload", json=body, headers=admin)
                await asyncio.sleep(0.3)
                stop.set()
                return [b for w in workers for b in await w], reload

        bodies, reload = asyncio.run(main())
        assert reload.status_code == 200, reload.text
        old_hash, new_hash = reload.json()["previous"]["content_hash"], reload.json()["current"]["content_hash"]
        assert old_hash != new_hash
        expected = {
            old_hash: expected_bmas(first.embedding, [5, 9, 30, 31], [5, 6, 7, 8]),
            new_hash: expected_bmas(second.embedding, [5, 9, 30, 31], [5, 6, 7, 8]),
        }
        hashes = [b["table"]["content_hash"] for b in bodies]
        assert set(hashes) == {old_hash, new_hash}  # traffic ran across the swap, none was dropped
        for body in bodies:  # each response says which table scored it, and its score is that table's
            assert body["results"][0]["accuracy"] == pytest.approx(expected[body["table"]["content_hash"]], abs=1e-5)

        bad = httpx.post(srv.url + "/admin/reload", json={"model_path": str(tmp_path / "nope")}, headers=admin)
        assert bad.status_code == 422 and bad.json()["error"]["details"][0]["field"] == "model_path"
        assert httpx.get(srv.url + "/v1/info").json()["content_hash"] == new_hash  # a failed reload changes nothing
