"""A real interruption: ``reward-server score`` in a subprocess, killed mid-run (SIGINT and SIGKILL),
then resumed; the result must equal an uninterrupted run byte for byte, with no duplicated rows.

The child slows each batch by a few milliseconds (a patch applied in the child only) so that the
kill lands mid-file on any machine; everything else is the real command. It starts with SIGINT
ignored, as a shell starts a background job (``make test &``, CI runners): the command itself must
make SIGINT stop it, whatever the test runner's own disposition (issue #20).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reward_server.cli import main
from reward_server.offline import backends
from reward_server.offline.synthetic import synthetic_rows, write_jsonl

CHILD = """
import sys, time
from reward_server.offline import backends
real = backends.LocalScorer.score
def slow(self, rows):
    time.sleep(0.04)
    return real(self, rows)
backends.LocalScorer.score = slow
from reward_server.cli import main
sys.exit(main(sys.argv[1:]))
"""
BATCH = "48"
# Parent and child score on CPU in float32: the outputs are compared byte for byte (unset, a GPU
# host would score the child on CUDA in bf16).
DEVICE = ["--device", "cpu"]


@pytest.fixture(autouse=True)
def _shared_table(default_table, monkeypatch):
    monkeypatch.setattr(backends, "_cached_table", lambda *args: default_table)


@pytest.fixture(scope="module")
def rollouts(tmp_path_factory) -> tuple[Path, bytes]:
    """~3,000 rows over all task types, and the bytes of an uninterrupted run over them."""
    root = tmp_path_factory.mktemp("interrupt")
    src = root / "rollouts.jsonl"
    write_jsonl(src, synthetic_rows(375, 8, seed=11))
    full = root / "full.jsonl"
    assert main(["score", str(src), str(full), "--batch-size", BATCH, *DEVICE]) == 0
    return src, full.read_bytes()


def _start(src: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "HF_HUB_OFFLINE": "1"}
    # sh ignores SIGINT, then exec's Python in its place (same pid): an ignored signal stays ignored
    # across exec, exactly what a background job inherits.
    return subprocess.Popen(
        ["/bin/sh", "-c", 'trap "" INT; exec "$@"', "sh",
         sys.executable, "-c", CHILD, "score", str(src), str(out), "--batch-size", BATCH, *DEVICE],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _wait_for_rows(out: Path, proc: subprocess.Popen, minimum: int, timeout: float = 120.0) -> int:
    progress = out.with_name(out.name + ".progress.json")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the run ended before it could be interrupted: {proc.communicate()}"
        try:
            rows = json.loads(progress.read_text())["rows"]
        except (OSError, ValueError, KeyError):
            rows = 0
        if rows >= minimum:
            return rows
        time.sleep(0.02)
    raise AssertionError("no progress")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_killed_run_resumes_to_the_same_output(rollouts, tmp_path, sig, capsys):
    src, expected = rollouts
    total = expected.count(b"\n")
    out = tmp_path / "scored.jsonl"
    proc = _start(src, out)
    done = _wait_for_rows(out, proc, 400)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    if sig == signal.SIGINT:
        assert proc.returncode == 130, err
        assert "Rerun the same command to resume" in err
    else:
        assert proc.returncode == -signal.SIGKILL
        # OUT.lock stays behind, naming the dead run; the kernel dropped its flock, so the resume below
        # takes it over instead of being refused (tests/test_offline_lock.py: a live holder refuses).
        assert json.loads(out.with_name(out.name + ".lock").read_text())["pid"] == proc.pid
    assert not out.exists()  # nothing under the final name until the run is complete
    partial = out.with_name(out.name + ".partial")
    checkpoint = json.loads(out.with_name(out.name + ".progress.json").read_text())
    assert done <= checkpoint["rows"] < total
    assert partial.stat().st_size >= checkpoint["out_bytes"]
    assert expected.startswith(partial.read_bytes()[: checkpoint["out_bytes"]])
    # what a kill between writing a batch and its checkpoint leaves behind: cut away on resume
    with partial.open("ab") as f:
        f.write(b'{"id": "half a batch that was never checkpointed"')

    assert main(["score", str(src), str(out), "--batch-size", BATCH, *DEVICE]) == 0
    assert "resumed" in capsys.readouterr().out
    got = out.read_bytes()
    # Row for row the uninterrupted run's output. A resumed run may cut its batches elsewhere, which
    # moves floats in the last bits (SPEC §6 allows 1e-5), so numbers compare within 1e-6.
    rows = [json.loads(line) for line in got.splitlines()]
    assert rows == [pytest.approx(json.loads(line), abs=1e-6) for line in expected.splitlines()]
    ids = [json.loads(line)["id"] for line in got.splitlines()]
    assert len(ids) == len(set(ids)) == total
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "scored.jsonl" and p.name != "scored.jsonl.meta.json"]
    assert leftovers == []
