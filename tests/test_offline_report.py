"""``reward-server report``: statistics against numpy, zero-variance fractions against a plain
recount, and the PNGs: present, sized, one panel per task type (read from the PNG metadata)."""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest

from reward_server.cli import main
from reward_server.offline import backends
from reward_server.offline.synthetic import synthetic_rows, write_jsonl

plotting = pytest.mark.skipif(
    find_spec("matplotlib") is None or find_spec("PIL") is None, reason="the plots need the `offline` extra"
)


@pytest.fixture(autouse=True)
def _shared_table(default_table, monkeypatch):
    monkeypatch.setattr(backends, "_cached_table", lambda *args: default_table)


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _panels(png: Path) -> list[str]:
    from PIL import Image

    with Image.open(png) as im:
        return json.loads(im.text["Description"])["panels"]


@plotting
def test_report_of_a_scored_file(tmp_path, capsys):
    from PIL import Image

    src = tmp_path / "rollouts.jsonl"
    write_jsonl(src, synthetic_rows(100, 6, seed=31))
    scored = tmp_path / "scored.jsonl"
    assert main(["score", str(src), str(scored)]) == 0
    capsys.readouterr()
    assert main(["report", str(scored)]) == 0
    out = capsys.readouterr().out
    report_dir = tmp_path / "scored_report"
    assert "# Reward report" in out and "REPORT.md" in out
    payload = json.loads((report_dir / "report.json").read_text())

    rows = _read(scored)
    by_task: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_task[r["reward_task_type"]].append(r)
    assert list(payload["tasks"]) == ["yes_no", "mcq", "chart", "grounding", "open_ended"]
    for task, members in by_task.items():
        for name in ("reward", "accuracy", "format"):
            values = np.array([m[name] for m in members])
            stats = payload["tasks"][task]["components"][name]
            assert stats["count"] == len(values)
            assert stats["mean"] == pytest.approx(values.mean())
            assert stats["std"] == pytest.approx(values.std())
            assert stats["p50"] == pytest.approx(np.median(values))
            assert stats["p95"] == pytest.approx(np.quantile(values, 0.95))
        groups: dict[str, list[float]] = defaultdict(list)
        for m in members:
            groups[m["group_id"]].append(m["reward"])
        zero = sum(max(g) - min(g) <= 1e-6 for g in groups.values())
        g = payload["tasks"][task]["groups"]
        assert (g["count"], g["zero_variance"]) == (len(groups), zero)
        assert g["zero_variance_fraction"] == pytest.approx(zero / len(groups))
    assert payload["scored_with"]["options"] == {"format_weight": 1.0, "bmas_reduction": "sum", "profile": "mixed-r1"}
    assert payload["warnings"] == []

    md = (report_dir / "REPORT.md").read_text()
    for name in ("rewards_by_task.png", "components_by_task.png", "group_std.png"):
        assert f"]({name})" in md
    tasks = ["yes_no", "mcq", "chart", "grounding", "open_ended"]
    assert _panels(report_dir / "rewards_by_task.png") == tasks
    assert _panels(report_dir / "group_std.png") == tasks
    assert _panels(report_dir / "components_by_task.png") == [f"{t}/{c}" for t in tasks for c in ("reward", "accuracy", "format")]
    with Image.open(report_dir / "rewards_by_task.png") as im:
        assert im.format == "PNG" and im.size == (1560, 780)  # 3 x 2 panels of 5.2 x 3.9 in at 100 dpi
        pixels = np.asarray(im.convert("RGB"))
        assert (pixels.std(axis=(0, 1)) > 10).all()  # drawn, not blank
    with Image.open(report_dir / "components_by_task.png") as im:
        assert im.size == (1290, 1500)


@plotting
def test_a_broken_configuration_is_flagged(tmp_path, capsys):
    """Everything scored 0 (e.g. the wrong ground-truth column): red panels and warnings."""
    from PIL import Image

    rows = [{"task_type": "mcq", "group_id": i // 4, "reward": 0.0, "accuracy": 0.0, "format": 0.0} for i in range(40)]
    rows += [{"task_type": "chart", "group_id": 100 + i // 4, "reward": float(i % 2), "accuracy": float(i % 2),
              "format": 0.0} for i in range(40)]
    src = tmp_path / "broken.jsonl"
    write_jsonl(src, rows)
    out_dir = tmp_path / "r"
    assert main(["report", str(src), "--out-dir", str(out_dir)]) == 0
    payload = json.loads((out_dir / "report.json").read_text())
    warnings = "\n".join(payload["warnings"])
    assert "mcq: every reward is 0" in warnings
    assert "mcq: accuracy is 0 for all 40 responses" in warnings
    assert "no response passes the format check" in warnings
    assert "mcq: 100% of groups have zero variance" in warnings
    assert payload["tasks"]["mcq"]["groups"]["zero_variance_fraction"] == 1.0
    assert payload["tasks"]["chart"]["groups"]["zero_variance_fraction"] == 0.0
    assert _panels(out_dir / "rewards_by_task.png") == ["mcq", "chart"]
    with Image.open(out_dir / "rewards_by_task.png") as im:
        assert im.size == (1040, 390)
        red = np.asarray(im.convert("RGB")).reshape(-1, 3)
        assert ((red[:, 0] > 150) & (red[:, 1] < 40) & (red[:, 2] < 60)).sum() > 1000  # the red degenerate bar
    assert "## Warnings" in capsys.readouterr().out


def test_unscored_file_and_bad_rows(tmp_path, capsys):
    src = tmp_path / "raw.jsonl"
    write_jsonl(src, synthetic_rows(3, 2, seed=1))
    assert main(["report", str(src), "--out-dir", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert f"{src}:1: field 'reward': missing: not a scored row" in err
    assert not (tmp_path / "r" / "report.json").exists()

    rows = [{"task_type": "yes_no", "reward": 1.0, "group_id": 1}, {"task_type": "yes_no", "reward": None},
            {"task_type": "nope", "reward": 1.0}, {"task_type": "yes_no", "reward": 0.0, "group_id": 1}]
    bad = tmp_path / "bad.jsonl"
    write_jsonl(bad, rows)
    assert main(["report", str(bad), "--skip-bad", "--no-plots", "--out-dir", str(tmp_path / "b")]) == 0
    payload = json.loads((tmp_path / "b" / "report.json").read_text())
    assert payload["counts"]["bad_rows"] == 2 and payload["counts"]["rows"] == 2
    assert payload["counts"]["first_bad_row"] == {"line": 2, "field": "reward",
                                                  "message": "missing: not a scored row (run `reward-server score` first)"}
    assert payload["counts"]["bad_lines_first"] == [2, 3]
    assert payload["plots"] == {}
    md = (tmp_path / "b" / "REPORT.md").read_text()
    assert "2 bad rows skipped" in md
    assert "First bad row: line 2, field `reward`: missing: not a scored row" in md and "Bad lines: 2, 3." in md


def test_first_20_bad_lines_are_listed(tmp_path):
    rows = [{"task_type": "mcq", "reward": 1.0, "group_id": 0}]
    rows += [{"task_type": "mcq", "reward": "x"} if i % 2 else {"task_type": "mcq", "reward": 0.0, "group_id": 0}
             for i in range(60)]
    src = tmp_path / "s.jsonl"
    write_jsonl(src, rows)
    assert main(["report", str(src), "--skip-bad", "--no-plots", "--out-dir", str(tmp_path / "r")]) == 0
    counts = json.loads((tmp_path / "r" / "report.json").read_text())["counts"]
    assert counts["bad_rows"] == 30 and counts["bad_lines_first"] == list(range(3, 43, 2))
    assert counts["first_bad_row"]["line"] == 3 and counts["first_bad_row"]["field"] == "reward"
    assert "41, ...." in (tmp_path / "r" / "REPORT.md").read_text()


def test_plots_without_matplotlib_is_a_usage_error_before_anything_is_written(tmp_path, monkeypatch, capsys):
    rows = [{"task_type": "mcq", "group_id": i // 2, "reward": float(i % 2)} for i in range(8)]
    src = tmp_path / "s.jsonl"
    write_jsonl(src, rows)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if the optional `offline` extra were absent
    out_dir = tmp_path / "r"
    assert main(["report", str(src), "--out-dir", str(out_dir)]) == 2
    err = capsys.readouterr().err
    assert 'pip install "mixed-reward[offline]"' in err and "--no-plots" in err
    assert not out_dir.exists()
    assert main(["report", str(src), "--out-dir", str(out_dir), "--no-plots"]) == 0
    payload = json.loads((out_dir / "report.json").read_text())
    assert payload["tasks"]["mcq"]["groups"]["count"] == 4 and payload["plots"] == {}
    assert sorted(p.name for p in out_dir.iterdir()) == ["REPORT.md", "report.json"]
