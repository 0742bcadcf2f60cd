"""``reward-server score``: values against an independent answer, order, resume, bad rows, modes.

In-process ``main([...])`` calls on files generated in tmp_path; the embedding table is the
session's default table (loading it per call would cost seconds each).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reward_server.cli import main
from reward_server.offline import backends
from reward_server.offline.synthetic import synthetic_prompts, synthetic_rows, write_jsonl


@pytest.fixture(autouse=True)
def _shared_table(default_table, monkeypatch):
    monkeypatch.setattr(backends, "_cached_table", lambda *args: default_table)


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _rows_file(tmp_path: Path, n_prompts: int = 60, k: int = 4, seed: int = 3) -> Path:
    path = tmp_path / "rollouts.jsonl"
    write_jsonl(path, synthetic_rows(n_prompts, k, seed))
    return path


def test_scores_match_an_independent_answer_in_input_order(tmp_path, capsys):
    src = _rows_file(tmp_path)
    out = tmp_path / "scored.jsonl"
    assert main(["score", str(src), str(out), "--batch-size", "37"]) == 0
    rows_in, rows_out = _read(src), _read(out)
    assert [r["id"] for r in rows_out] == [r["id"] for r in rows_in]  # input order, no loss, no duplicates
    tasks = set()
    for given, scored in zip(rows_in, rows_out):
        for key, value in given.items():
            assert scored[key] == value  # every input field kept as is
        tasks.add(scored["reward_task_type"])
        assert scored["format"] == given["expected_format"]
        if given["expected_accuracy"] is None:  # open-ended: BMAS, sum reduction, in [-2, 2]
            assert -2.0 <= scored["accuracy"] <= 2.0
            assert scored["accuracy"] == pytest.approx(scored["bmas_forward"] + scored["bmas_backward"])
        else:
            assert scored["accuracy"] == pytest.approx(given["expected_accuracy"], abs=1e-9)
            assert scored["bmas_forward"] is None
        assert scored["reward"] == pytest.approx(scored["accuracy"] + scored["format"])
    assert tasks == {"yes_no", "mcq", "chart", "grounding", "open_ended"}
    meta = json.loads((tmp_path / "scored.jsonl.meta.json").read_text())
    assert meta["rows"] == len(rows_in) and meta["rejected"] == 0
    assert not list(tmp_path.glob("*.partial")) and not list(tmp_path.glob("*.progress.json"))
    assert "240 rows" in capsys.readouterr().out


def test_options_and_equal_results_for_any_batch_size(tmp_path):
    src = _rows_file(tmp_path, 25, 4)
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert main(["score", str(src), str(a), "--batch-size", "1000"]) == 0
    assert main(["score", str(src), str(b), "--batch-size", "3", "--format-weight", "0", "--bmas-reduction", "mean"]) == 0
    for x, y in zip(_read(a), _read(b)):
        assert y["reward"] == pytest.approx(y["accuracy"])  # format weight 0
        if x["reward_task_type"] == "open_ended":
            assert y["accuracy"] == pytest.approx(x["accuracy"] / 2, abs=1e-5)
        else:
            assert y["accuracy"] == x["accuracy"]


def test_field_mapping_dotted_names_and_default_task(tmp_path):
    src = tmp_path / "verl.jsonl"
    rows = [
        {"completion": "<think>t</think><answer>B</answer>", "reward_model": {"ground_truth": "B"}, "uid": 1},
        {"completion": "The answer is C", "reward_model": {"ground_truth": "(B) 4 cm"}, "uid": 1},
    ]
    write_jsonl(src, rows)
    out = tmp_path / "out.jsonl"
    args = ["--response-field", "completion", "--ground-truth-field", "reward_model.ground_truth",
            "--task-type", "multiple choice", "--group-field", "uid", "--output-fields", "uid"]
    assert main(["score", str(src), str(out), *args]) == 0
    got = _read(out)
    assert [(r["uid"], r["reward"], r["reward_task_type"]) for r in got] == [(1, 2.0, "mcq"), (1, 0.0, "mcq")]
    assert "completion" not in got[0]  # --output-fields keeps only what was asked, plus the scores


def test_prompt_rows_get_lists_of_components(tmp_path):
    src = tmp_path / "prompts.jsonl"
    prompts = list(synthetic_prompts(15, 4, seed=5))
    write_jsonl(src, prompts)
    out = tmp_path / "scored.jsonl"
    assert main(["score", str(src), str(out), "--batch-size", "6"]) == 0
    for given, scored in zip(prompts, _read(out)):
        assert len(scored["rewards"]) == 4 and "reward" not in scored
        assert scored["formats"] == given["expected_formats"]
        for acc, expected in zip(scored["accuracies"], given["expected_accuracies"]):
            if expected is not None:
                assert acc == pytest.approx(expected, abs=1e-9)


def test_interrupted_in_process_run_resumes_without_rescoring(tmp_path, monkeypatch, capsys):
    src = _rows_file(tmp_path, 50, 4)
    full, out = tmp_path / "full.jsonl", tmp_path / "out.jsonl"
    assert main(["score", str(src), str(full), "--batch-size", "16"]) == 0
    real = backends.LocalScorer.score
    calls = {"n": 0}

    def interrupt_on_fifth(self, rows):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(self, rows)

    monkeypatch.setattr(backends.LocalScorer, "score", interrupt_on_fifth)
    assert main(["score", str(src), str(out), "--batch-size", "16"]) == 130
    assert "rerun the same command to resume" in capsys.readouterr().err.lower()
    assert not out.exists()
    progress = json.loads((tmp_path / "out.jsonl.progress.json").read_text())
    assert progress["rows"] == 64  # 4 batches of 16 committed
    scored_items = []
    monkeypatch.setattr(backends.LocalScorer, "score", lambda self, rows: scored_items.extend(rows) or real(self, rows))
    assert main(["score", str(src), str(out), "--batch-size", "16"]) == 0
    assert len(scored_items) == 200 - 64  # only the rest was scored
    assert "resumed" in capsys.readouterr().out
    assert out.read_bytes() == full.read_bytes()
    # rerunning a finished command is a no-op; other options are refused, --overwrite replaces
    assert main(["score", str(src), str(out)]) == 0
    assert "already complete" in capsys.readouterr().out
    assert main(["score", str(src), str(out), "--format-weight", "0.5"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["score", str(src), str(out), "--format-weight", "0.5", "--overwrite"]) == 0


def test_resume_with_other_options_is_refused(tmp_path, monkeypatch, capsys):
    src = _rows_file(tmp_path, 20, 4)
    out = tmp_path / "out.jsonl"
    real = backends.LocalScorer.score

    def boom(self, rows):
        raise KeyboardInterrupt

    monkeypatch.setattr(backends.LocalScorer, "score", boom)
    assert main(["score", str(src), str(out), "--batch-size", "8"]) == 130
    monkeypatch.setattr(backends.LocalScorer, "score", real)
    assert main(["score", str(src), str(out), "--format-weight", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "different input or different options" in err and "format_weight" in err and "--restart" in err
    assert main(["score", str(src), str(out), "--format-weight", "0.5", "--restart"]) == 0


def test_bad_rows_stop_with_line_and_field_or_are_skipped(tmp_path, capsys):
    good = list(synthetic_rows(10, 2, seed=9))
    lines = [json.dumps(r) for r in good]
    lines.insert(3, "{not json")
    bad_task = dict(good[0], task_type="poetry")
    lines.insert(7, json.dumps(bad_task))
    bad_box = dict(good[0], task_type="grounding", ground_truth="no box here")
    lines.insert(11, json.dumps(bad_box))
    lines.insert(13, "")  # a blank line is not a row (but still counts for line numbers)
    lines.insert(15, json.dumps({"response": 3, "ground_truth": "yes", "task_type": "yes_no"}))
    src = tmp_path / "bad.jsonl"
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"

    assert main(["score", str(src), str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{src}:4: field '(row)': not valid JSON" in err
    assert "--skip-bad" in err and not out.exists()

    assert main(["score", str(src), str(out), "--skip-bad"]) == 0  # resumes after the 3 good rows
    assert "skipped 4 bad rows" in capsys.readouterr().out
    rejected = _read(tmp_path / "out.jsonl.rejected.jsonl")
    assert [(r["line"], r["field"]) for r in rejected] == [
        (4, "(row)"), (8, "task_type"), (12, "ground_truth"), (16, "response"),
    ]
    assert "unknown task type 'poetry'" in rejected[1]["message"]
    assert [r["id"] for r in _read(out)] == [r["id"] for r in good]


def test_parquet_input(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = list(synthetic_rows(12, 2, seed=4))
    for r in rows:
        r["ground_truth"] = json.dumps(r["ground_truth"]) if not isinstance(r["ground_truth"], str) else r["ground_truth"]
        r.pop("expected_accuracy")
    src = tmp_path / "rollouts.parquet"
    pq.write_table(pa.Table.from_pylist(rows), src, row_group_size=5)
    jsonl = tmp_path / "rollouts.jsonl"
    write_jsonl(jsonl, rows)
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert main(["score", str(src), str(a), "--batch-size", "7"]) == 0
    assert main(["score", str(jsonl), str(b)]) == 0
    # Splitting a group across batches changes the matmul shapes, so floats may differ in the last
    # bits; SPEC §6 allows 1e-5 against a per-item computation.
    assert _read(a) == [pytest.approx(row, abs=1e-6) for row in _read(b)]


def test_url_mode_equals_in_process(tmp_path, server):
    src = _rows_file(tmp_path, 20, 4)
    local, remote = tmp_path / "local.jsonl", tmp_path / "remote.jsonl"
    assert main(["score", str(src), str(local)]) == 0
    assert main(["score", str(src), str(remote), "--url", server.url, "--batch-size", "25"]) == 0
    for x, y in zip(_read(local), _read(remote)):
        assert x.keys() == y.keys()
        for key in x:
            if isinstance(x[key], float):
                assert y[key] == pytest.approx(x[key], abs=1e-5)
            else:
                assert y[key] == x[key]


def test_missing_input_is_a_usage_error(tmp_path, capsys):
    assert main(["score", str(tmp_path / "nope.jsonl"), str(tmp_path / "o.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_progress_bar_only_on_a_terminal_or_when_asked(tmp_path, capsys):
    src = _rows_file(tmp_path, 10, 2)
    assert main(["score", str(src), str(tmp_path / "a.jsonl")]) == 0
    assert capsys.readouterr().err == ""  # stderr is not a terminal under pytest: quiet
    assert main(["score", str(src), str(tmp_path / "b.jsonl"), "--progress"]) == 0
    err = capsys.readouterr().err
    assert "score:" in err and "100%" in err


class _Killed(BaseException):
    """Stands for a SIGKILL inside ``finish``: nothing after it runs (not even ``except Exception``)."""


@pytest.mark.parametrize(
    ("target", "when"),
    [("out.jsonl.rejected.jsonl", "before"), ("out.jsonl", "before"), ("out.jsonl", "after")],
    ids=["before-rejected-rename", "between-renames", "after-data-rename"],
)
def test_a_run_killed_inside_finish_is_completed_by_the_rerun(tmp_path, monkeypatch, capsys, target, when):
    import os

    from reward_server.offline import sink

    good = [json.dumps(r) for r in synthetic_rows(30, 2, seed=8)]
    lines = good[:10] + ["{broken"] + good[10:40] + ['{"response": 1}'] + good[40:]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines) + "\n")
    ref, out = tmp_path / "ref.jsonl", tmp_path / "out.jsonl"
    assert main(["score", str(src), str(ref), "--skip-bad", "--batch-size", "16"]) == 0
    real_replace = os.replace

    def killing_replace(src_path, dst_path):
        if Path(dst_path).name == target and when == "before":
            raise _Killed
        real_replace(src_path, dst_path)
        if Path(dst_path).name == target and when == "after":
            raise _Killed

    monkeypatch.setattr(sink.os, "replace", killing_replace)
    with pytest.raises(_Killed):
        main(["score", str(src), str(out), "--skip-bad", "--batch-size", "16"])
    monkeypatch.setattr(sink.os, "replace", real_replace)
    assert (tmp_path / "out.jsonl.progress.json").exists()
    capsys.readouterr()

    scored: list = []
    real_score = backends.LocalScorer.score
    monkeypatch.setattr(backends.LocalScorer, "score", lambda self, rows: scored.extend(rows) or real_score(self, rows))
    assert main(["score", str(src), str(out), "--skip-bad", "--batch-size", "16"]) == 0
    assert "already complete (60 rows)" in capsys.readouterr().out
    assert scored == []  # nothing rescored: the finish was only redone
    assert out.read_bytes() == ref.read_bytes()
    rejected = _read(tmp_path / "out.jsonl.rejected.jsonl")
    assert [(r["line"], r["field"]) for r in rejected] == [(11, "(row)"), (42, "ground_truth")]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("out.")) == [
        "out.jsonl", "out.jsonl.meta.json", "out.jsonl.rejected.jsonl",
    ]


def test_restart_rescores_a_finished_identical_run(tmp_path, monkeypatch, capsys):
    src = _rows_file(tmp_path, 10, 2)
    out = tmp_path / "out.jsonl"
    assert main(["score", str(src), str(out)]) == 0
    first = out.read_bytes()
    scored: list = []
    real_score = backends.LocalScorer.score
    monkeypatch.setattr(backends.LocalScorer, "score", lambda self, rows: scored.extend(rows) or real_score(self, rows))
    capsys.readouterr()
    assert main(["score", str(src), str(out), "--restart"]) == 0
    assert len(scored) == 20 and "20 rows" in capsys.readouterr().out
    assert out.read_bytes() == first
    # --restart replaces only a finished run of the same input and options: anything else needs --overwrite
    assert main(["score", str(src), str(out), "--restart", "--format-weight", "0"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert out.read_bytes() == first


def test_progress_without_tqdm_scores_without_a_bar(tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "tqdm", None)  # as if the optional `offline` extra were absent
    src = _rows_file(tmp_path, 10, 2)
    out = tmp_path / "out.jsonl"
    assert main(["score", str(src), str(out), "--progress"]) == 0
    assert "tqdm is not installed" in capsys.readouterr().err
    assert len(_read(out)) == 20
    assert not list(tmp_path.glob("*.partial")) and not list(tmp_path.glob("*.progress.json"))
