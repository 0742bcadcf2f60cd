"""One writer per output: ``OUT.lock`` (an exclusive ``flock``) refuses a second run on the same ``OUT``.

Without it two ``reward-server score`` runs on one output both appended to ``OUT.partial`` and
overwrote each other's checkpoint: duplicated rows, exit 0 twice, and "already complete" on rerun.
Real processes throughout. The first run is frozen with SIGSTOP as soon as it holds the lock, so it
is provably still running (and still holds the lock) when the second one starts, however slow the
machine: no sleep decides the outcome. (The resume after a SIGKILL *mid-file*, through the stale
lock it leaves, is also covered by tests/test_offline_interrupt.py.)
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

ROOT = Path(__file__).resolve().parents[1]
BATCH = "48"
BUSY = "is being written by another run"
#: Holds OUT's lock with the product's own function until its stdin closes (a stand-in for any run).
HOLDER = """
import sys
from pathlib import Path
from reward_server.offline.sink import output_lock
with output_lock(Path(sys.argv[1]), "filter"):
    print("held", flush=True)
    sys.stdin.read()
"""


@pytest.fixture(autouse=True)
def _shared_table(default_table, monkeypatch):
    monkeypatch.setattr(backends, "_cached_table", lambda *args: default_table)


@pytest.fixture(scope="module")
def rollouts(tmp_path_factory) -> Path:
    """3,000 rows: 63 checkpoints at --batch-size 48, so a run can be caught mid-file."""
    src = tmp_path_factory.mktemp("lock") / "rollouts.jsonl"
    write_jsonl(src, synthetic_rows(375, 8, seed=5))
    return src


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}


def _score(src: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "reward_server", "score", str(src), str(out), "--batch-size", BATCH],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _sidecar(out: Path, suffix: str) -> Path:
    return out.with_name(out.name + suffix)


def _wait_running(out: Path, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    """Until ``proc`` holds OUT's lock (its pid is in ``OUT.lock``; written before the table is even
    loaded, so seconds before the run can end) or, without a lock, has checkpointed a batch."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the first run ended before the second could start: {proc.communicate()}"
        try:
            holder = json.loads(_sidecar(out, ".lock").read_text())["pid"]
        except (OSError, ValueError, KeyError):
            holder = None
        try:
            rows = json.loads(_sidecar(out, ".progress.json").read_text())["rows"]
        except (OSError, ValueError, KeyError):
            rows = 0
        if holder == proc.pid or rows > 0:
            return
        time.sleep(0.005)
    raise AssertionError("the first run never got going")


def _ids(path: Path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


def test_a_second_run_on_the_same_output_is_refused_and_the_first_completes(rollouts, tmp_path):
    out = tmp_path / "scored.jsonl"
    first = _score(rollouts, out)
    try:
        _wait_running(out, first)
        first.send_signal(signal.SIGSTOP)
        # Frozen: still alive and still the holder, its output unfinished.
        assert first.poll() is None
        assert json.loads(_sidecar(out, ".lock").read_text())["pid"] == first.pid
        assert not out.exists()
        before = sorted((p.name, p.read_bytes()) for p in tmp_path.iterdir())

        second = _score(rollouts, out)
        stdout, stderr = second.communicate(timeout=180)
        assert second.returncode == 2, (stdout, stderr)
        lines = stderr.strip().splitlines()
        assert len(lines) == 1, stderr
        assert BUSY in lines[0] and f"pid {first.pid}" in lines[0] and str(out) in lines[0], lines[0]
        assert "reward-server score started" in lines[0]
        assert stdout == ""
        assert sorted((p.name, p.read_bytes()) for p in tmp_path.iterdir()) == before  # it touched nothing
    finally:
        first.send_signal(signal.SIGCONT)
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert "3,000 rows" in stdout and "already complete" not in stdout
    assert _ids(out) == _ids(rollouts)  # exactly one row per input row, in input order
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scored.jsonl", "scored.jsonl.meta.json"]  # lock removed


def test_a_sigkilled_run_leaves_no_lock_that_blocks_the_next_run(rollouts, tmp_path, capsys):
    out = tmp_path / "scored.jsonl"
    first = _score(rollouts, out)
    try:
        _wait_running(out, first)
    finally:
        first.kill()
    first.wait(timeout=60)
    assert first.returncode == -signal.SIGKILL
    stale = json.loads(_sidecar(out, ".lock").read_text())  # the file stays; the kernel dropped the lock
    assert stale["pid"] == first.pid

    assert main(["score", str(rollouts), str(out), "--batch-size", BATCH]) == 0
    assert BUSY not in capsys.readouterr().err
    assert _ids(out) == _ids(rollouts)
    assert not _sidecar(out, ".lock").exists()


def test_filter_takes_the_same_lock_on_its_output(tmp_path, capsys):
    src = tmp_path / "rollouts.jsonl"
    write_jsonl(src, synthetic_rows(30, 4, seed=2))
    scored = tmp_path / "scored.jsonl"
    assert main(["score", str(src), str(scored)]) == 0
    out = tmp_path / "kept.jsonl"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], env=_env(), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        capsys.readouterr()
        assert main(["filter", str(scored), str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and BUSY in err[0] and f"pid {holder.pid}" in err[0] and str(out) in err[0], err
        assert not out.exists() and not _sidecar(out, ".summary.json").exists()
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert main(["filter", str(scored), str(out)]) == 0  # released with its holder
    assert out.exists() and not _sidecar(out, ".lock").exists()
