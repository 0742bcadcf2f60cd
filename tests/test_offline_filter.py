"""``reward-server filter``: the kept prompts must be exactly those an independent, pure-Python
reading of the generated file says carry GRPO signal, in both layouts."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

from reward_server.cli import main
from reward_server.offline import backends
from reward_server.offline.filter import decide
from reward_server.offline.synthetic import synthetic_prompts, synthetic_rows, write_jsonl

CANON = {"yorn": "yes_no", "binary": "yes_no", "multiple-choice": "mcq", "choice": "mcq", "chartqa": "chart",
         "numeric": "chart", "iou": "grounding", "bbox": "grounding", "caption": "open_ended",
         "free form": "open_ended"}


@pytest.fixture(autouse=True)
def _shared_table(default_table, monkeypatch):
    monkeypatch.setattr(backends, "_cached_table", lambda *args: default_table)


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _task(name: str) -> str:
    return CANON.get(name.lower(), name.lower())


def expected_signal(responses: list[str], accuracies: list, formats: list[float], task: str) -> tuple[bool, str]:
    """Independent of the scorer: rule rewards from the generator's known answers; for open-ended
    groups, BMAS of identical texts is identical and of different captions differs."""
    if task == "open_ended":
        same = len(set(responses)) == 1
        return (not same, "all_equal" if same else "kept")
    rewards = [a + f for a, f in zip(accuracies, formats)]
    if max(rewards) - min(rewards) > 1e-6:
        return True, "kept"
    if all(a == 1.0 for a in accuracies):
        return False, "all_correct"
    if all(a == 0.0 for a in accuracies):
        return False, "all_wrong"
    return False, "all_equal"


def test_per_response_rows_grouped_by_field(tmp_path, capsys):
    rows = list(synthetic_rows(150, 6, seed=21, shuffle=True))  # groups interleaved across the file
    src = tmp_path / "rollouts.jsonl"
    write_jsonl(src, rows)
    out = tmp_path / "kept.jsonl"
    assert main(["filter", str(src), str(out), "--min-std", "0", "--write-dropped"]) == 0
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        groups[r["group_id"]].append(r)
    expected: dict[str, tuple[bool, str]] = {
        gid: expected_signal([m["response"] for m in members], [m["expected_accuracy"] for m in members],
                             [m["expected_format"] for m in members], _task(members[0]["task_type"]))
        for gid, members in groups.items()
    }
    kept = _read(out)
    assert {r["group_id"] for r in kept} == {g for g, (keep, _) in expected.items() if keep}
    assert [r["id"] for r in kept] == [r["id"] for r in rows if expected[r["group_id"]][0]]  # input order
    assert all("reward" in r for r in kept)
    dropped = _read(tmp_path / "kept.jsonl.dropped.jsonl")
    assert len(dropped) + len(kept) == len(rows)
    assert {r["filter_reason"] for r in dropped} <= {"all_correct", "all_wrong", "all_equal"}

    summary = json.loads((tmp_path / "kept.jsonl.summary.json").read_text())
    assert summary["totals"]["groups"] == 150
    assert summary["totals"]["kept"] == sum(keep for keep, _ in expected.values())
    assert summary["totals"]["rows_kept"] == len(kept)
    by_task: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for gid, (_, reason) in expected.items():
        by_task[_task(groups[gid][0]["task_type"])][reason] += 1
    for task, reasons in by_task.items():
        got = summary["by_task"][task]
        assert got["kept"] == reasons["kept"]
        if task in ("yes_no", "mcq", "chart"):
            for reason in ("all_correct", "all_wrong", "all_equal"):
                assert got["reasons"][reason] == reasons[reason], (task, reason)
    assert "kept" in capsys.readouterr().out


def test_prompt_rows_and_an_already_scored_input(tmp_path):
    prompts = list(synthetic_prompts(100, 8, seed=22))
    src = tmp_path / "prompts.jsonl"
    write_jsonl(src, prompts)
    out = tmp_path / "kept.jsonl"
    assert main(["filter", str(src), str(out), "--min-std", "0"]) == 0
    keep = [
        expected_signal(p["responses"], p["expected_accuracies"], p["expected_formats"], _task(p["task_type"]))[0]
        for p in prompts
    ]
    assert [r["prompt_id"] for r in _read(out)] == [p["prompt_id"] for p, k in zip(prompts, keep) if k]
    scored = tmp_path / "kept.jsonl.scored.jsonl"  # kept for `report`
    assert len(_read(scored)) == 100

    # a scored file is filtered without scoring again, and the answer is the same
    out2 = tmp_path / "kept2.jsonl"
    assert main(["filter", str(scored), str(out2), "--min-std", "0"]) == 0
    assert not (tmp_path / "kept2.jsonl.scored.jsonl").exists()
    assert out2.read_bytes() == out.read_bytes()


def test_min_std_applies_to_continuous_tasks_only(tmp_path):
    rows = []
    for gid, task, rewards in [
        ("g-iou-flat", "grounding", [0.500, 0.502, 0.504, 0.506]),  # std 0.0026: noise
        ("g-iou-real", "grounding", [0.1, 0.5, 0.9, 0.3]),
        ("g-bmas-flat", "open_ended", [1.30, 1.31, 1.30, 1.31]),
        ("g-mcq-small", "mcq", [1.0, 1.0, 1.0, 1.1]),  # binary task: any difference counts
        ("g-mcq-equal", "mcq", [2.0, 2.0, 2.0, 2.0]),
        ("g-single", "chart", [1.0]),
    ]:
        for i, r in enumerate(rewards):
            rows.append({"gid": gid, "i": i, "type": task, "reward": r, "accuracy": min(r, 1.0), "format": 1.0})
    src = tmp_path / "scored.jsonl"
    write_jsonl(src, rows)
    out = tmp_path / "kept.jsonl"
    assert main(["filter", str(src), str(out), "--group-field", "gid", "--task-type-field", "type"]) == 0
    assert sorted({r["gid"] for r in _read(out)}) == ["g-iou-real", "g-mcq-small"]
    summary = json.loads((tmp_path / "kept.jsonl.summary.json").read_text())
    assert summary["rule"]["min_std"] == 0.01
    assert summary["by_task"]["grounding"]["reasons"]["low_std"] == 1
    assert summary["by_task"]["open_ended"]["reasons"]["low_std"] == 1
    assert summary["by_task"]["mcq"]["reasons"]["all_correct"] == 1
    assert summary["by_task"]["chart"]["reasons"]["single_response"] == 1
    out0 = tmp_path / "kept0.jsonl"
    assert main(["filter", str(src), str(out0), "--group-field", "gid", "--task-type-field", "type", "--min-std", "0"]) == 0
    assert sorted({r["gid"] for r in _read(out0)}) == ["g-bmas-flat", "g-iou-flat", "g-iou-real", "g-mcq-small"]


def test_decide_uses_the_services_zero_variance_rule():
    from reward_server.rewards.groups import summarise_group

    for rewards in ([1.0, 1.0 + 5e-7], [0.3, 0.3 + 2e-6], [2.0, 2.0]):
        reason, summary = decide("chart", rewards, [None] * len(rewards), 1e-6, 0.0)
        assert (reason != "kept") == summarise_group("g", rewards, 1e-6).zero_variance == summary.zero_variance


def test_bad_rows_in_a_scored_file(tmp_path, capsys):
    rows = [{"g": 1, "task_type": "mcq", "reward": 1.0}, {"g": 1, "task_type": "mcq", "reward": 0.0},
            {"g": 2, "task_type": "mcq", "reward": "high"}, {"task_type": "mcq", "reward": 1.0}]
    src = tmp_path / "scored.jsonl"
    write_jsonl(src, rows)
    out = tmp_path / "kept.jsonl"
    assert main(["filter", str(src), str(out), "--group-field", "g"]) == 1
    assert f"{src}:3: field 'reward': must be a finite number" in capsys.readouterr().err
    assert not out.exists()
    assert main(["filter", str(src), str(out), "--group-field", "g", "--skip-bad"]) == 0
    summary = json.loads((tmp_path / "kept.jsonl.summary.json").read_text())
    assert summary["bad_rows"] == 2 and summary["bad_lines_first"] == [3, 4]
    assert len(_read(out)) == 2


def test_running_group_statistics_decide_like_the_list_rule():
    import random

    from reward_server.offline.filter import GroupStats

    rng = random.Random(4)
    seen = set()
    for _ in range(3000):
        task = rng.choice(["yes_no", "mcq", "chart", "grounding", "open_ended"])
        n = rng.choice([1, 2, 3, 8])
        kind = rng.random()
        if kind < 0.3:  # equal rewards, accuracies all 1 / all 0 / mixed / unknown
            rewards = [rng.choice([0.0, 1.0, 2.0])] * n
            accuracies = [rng.choice([[0.0] * n, [1.0] * n, [1.0] + [0.0] * (n - 1), [None] * n])][0]
        elif kind < 0.6:  # continuous, small spread around the 0.01 std threshold
            base = rng.random()
            rewards = [base + rng.gauss(0, rng.choice([1e-7, 0.003, 0.02])) for _ in range(n)]
            accuracies = rewards
        else:
            rewards = [rng.choice([0.0, 1.0, 2.0]) for _ in range(n)]
            accuracies = [min(r, 1.0) for r in rewards]
        g = GroupStats(task)
        for r, a in zip(rewards, accuracies):  # one row per response, as the grouped layout reads them
            g.add([r], [a])
        expected, summary = decide(task, rewards, accuracies, 1e-6, 0.01)
        if abs(summary.std - 0.01) > 1e-9:  # away from the threshold, rounding cannot flip it
            assert g.decide(1e-6, 0.01) == expected, (task, rewards, accuracies)
        assert g.n == n and g.std == pytest.approx(summary.std, rel=1e-9, abs=1e-12)
        assert (g.min, g.max) == (summary.min, summary.max)
        seen.add(expected)
    assert seen == {"kept", "all_correct", "all_wrong", "all_equal", "low_std", "single_response"}


def test_filter_memory_does_not_grow_with_responses_per_group(tmp_path):
    """Pass 1 keeps running statistics per group: 200 groups of 50 responses need no more
    memory than 200 groups of 2 (the old list of floats per group added ~65 bytes per response)."""
    import tracemalloc

    from reward_server.offline.filter import FilterJob, run_filter
    from reward_server.offline.rows import FieldMap

    def peak(k: int) -> int:
        src = tmp_path / f"k{k}.jsonl"
        write_jsonl(src, ({"g": f"group-{i % 200}", "task_type": "grounding", "reward": (i * 7919 % 1000) / 1000,
                           "accuracy": 0.5, "format": 1.0} for i in range(200 * k)))
        job = FilterJob(input=src, output=tmp_path / f"kept{k}.jsonl", fields=FieldMap(group="g"))
        tracemalloc.start()
        try:
            summary = run_filter(job, src)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            assert summary.payload["totals"]["groups"] == 200

    small, large = peak(2), peak(50)
    assert large - small < 100_000, (small, large)


def test_filter_summary_names_the_first_bad_row(tmp_path):
    rows = [{"g": 1, "task_type": "mcq", "reward": 1.0}, {"task_type": "mcq", "reward": 0.5},
            {"g": 1, "task_type": "mcq", "reward": 0.0}, {"g": 2, "task_type": "nope", "reward": 1.0}]
    src = tmp_path / "scored.jsonl"
    write_jsonl(src, rows)
    out = tmp_path / "kept.jsonl"
    assert main(["filter", str(src), str(out), "--group-field", "g", "--skip-bad"]) == 0
    summary = json.loads((tmp_path / "kept.jsonl.summary.json").read_text())
    assert summary["bad_rows"] == 2 and summary["bad_lines_first"] == [2, 4]
    assert summary["first_bad_row"]["line"] == 2 and summary["first_bad_row"]["field"] == "g"
    assert [r["reward"] for r in _read(out)] == [1.0, 0.0]
