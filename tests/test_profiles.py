"""Reward profiles (SPEC §6b): mixed-r1 and robust, idf files, the HTTP and CLI surfaces."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from reward_server.cli import main
from reward_server.engine.idf import IdfFileError, IdfTable, load_idf, tokenizer_hash
from reward_server.engine.scorer import RewardEngine
from reward_server.errors import ItemFieldError
from reward_server.offline import backends
from reward_server.rewards.options import ResolvedOptions
from reward_server.rewards.profiles import PROFILE_NAMES, f_measure, parse_profile
from reward_server.rewards.rules import prepare_ground_truth
from reward_server.rewards.scoring import PreparedItem

CAPTIONS = [
    ("a brown dog runs along the beach", "a puppy is running on the sand by the sea", "a red car parked in a garage"),
    ("two children play football in a park", "a pair of kids kick a ball on the grass",
     "an old man reads a newspaper on a train"),
    ("a bowl of soup next to a loaf of bread", "soup in a bowl beside some bread", "a cat sleeping on a sofa"),
    ("a woman rides a bicycle down a city street", "a lady cycling along an urban road",
     "three birds sitting on a wire"),
]
STOP_WORD_HACKS = ("a .", "the a of .", ". , .", "a", "the")


@pytest.fixture(autouse=True)
def _shared_table(default_table, monkeypatch):
    monkeypatch.setattr(backends, "_cached_table", lambda *args: default_table)


def _score(engine: RewardEngine, pairs: list[tuple[str, str]], **options: object) -> list[float]:
    opts = ResolvedOptions(format_weight=0.0, **options)  # type: ignore[arg-type]
    items = [PreparedItem(r, prepare_ground_truth("open_ended", t), opts) for t, r in pairs]
    return [s.accuracy for s in engine.score(items)[0]]


def _caption_idf(tmp_path: Path) -> Path:
    """An idf file built by the CLI from caption-like truths (stop words in every one)."""
    subjects = ["dog", "cat", "man", "woman", "child", "bus", "bird", "boat", "horse", "car"]
    places = ["beach", "park", "street", "kitchen", "field", "lake", "garden", "station"]
    rows = [{"ground_truth": f"a {s} is on the side of the {p} .", "task_type": "caption"} for s in subjects for p in places]
    rows += [{"ground_truth": t, "task_type": "open_ended"} for t, _, _ in CAPTIONS]
    rows += [{"ground_truth": "yes", "task_type": "yes_no"}]  # skipped: not open-ended
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "captions.idf.json"
    assert main(["idf", str(data), "-o", str(out), "--no-progress"]) == 0
    return out


# ------------------------------------------------------------------------------------ pure parts


def test_f_measure() -> None:
    assert f_measure(1.0, 1.0) == 1.0
    assert f_measure(1.0, 0.2) == pytest.approx(2 * 0.2 / 1.2)
    assert f_measure(1.0, 0.2) < (1.0 + 0.2) / 2  # the harmonic mean punishes one weak direction
    assert f_measure(-0.5, 0.9) == -0.5 and f_measure(0.0, 0.7) == 0.0
    assert f_measure(1e-9, 0.8) == pytest.approx(0.0, abs=1e-8)  # continuous at 0


def test_parse_profile() -> None:
    assert parse_profile("robust").name == "robust"
    assert parse_profile("MIXED_R1").name == "mixed-r1"
    with pytest.raises(ItemFieldError) as info:
        parse_profile("paper")
    assert "mixed-r1" in info.value.message and "robust" in info.value.message


# ---------------------------------------------------------------------------------------- engine


def test_robust_puts_correct_paraphrases_above_stop_words(default_table, tmp_path) -> None:
    """The issue's finding: under mixed-r1 'a .' is near a correct paraphrase; under robust it is
    below it on every caption, and with idf weights at or below a wrong caption."""
    plain = RewardEngine(default_table)
    weighted = RewardEngine(default_table, idf=load_idf(_caption_idf(tmp_path)))
    best_hacks, wrongs = [], []
    for truth, paraphrase, wrong in CAPTIONS:
        for engine in (plain, weighted):
            correct, wrong_score, *hacks = _score(
                engine, [(truth, paraphrase), (truth, wrong)] + [(truth, h) for h in STOP_WORD_HACKS], profile="robust"
            )
            assert max(hacks) < correct, (truth, hacks, correct)
        best_hacks.append(max(hacks))  # the idf engine's, the last one run
        wrongs.append(wrong_score)
    assert sum(best_hacks) / len(best_hacks) <= sum(wrongs) / len(wrongs) + 0.1, (best_hacks, wrongs)
    # and the paper's formula really is gamed by them (what the robust profile is for)
    paper = _score(plain, [(t, "a .") for t, _, _ in CAPTIONS]) + _score(plain, [(t, p) for t, p, _ in CAPTIONS])
    assert sum(paper[:4]) / 4 > 0.7 * sum(paper[4:]) / 4


def test_robust_identical_texts_score_the_maximum(default_table, tmp_path) -> None:
    for engine in (RewardEngine(default_table), RewardEngine(default_table, idf=load_idf(_caption_idf(tmp_path)))):
        truths = [t for t, _, _ in CAPTIONS] + ["dog dog dog .", "Ünïcode naïve café"]
        assert _score(engine, [(t, t) for t in truths], profile="robust") == [2.0] * len(truths)
        assert _score(engine, [(t, t) for t in truths], profile="robust", bmas_reduction="mean") == [1.0] * len(truths)


def test_robust_repetition_does_not_raise_the_reward(default_table) -> None:
    engine = RewardEngine(default_table)
    truth, _, wrong = CAPTIONS[0]
    once, padded = _score(engine, [(truth, wrong + " dog"), (truth, wrong + " dog" * 20)], profile="robust")
    assert padded == pytest.approx(once, abs=1e-6)
    paper_once, paper_padded = _score(engine, [(truth, wrong + " dog"), (truth, wrong + " dog" * 20)])
    assert paper_padded > paper_once + 0.2  # the paper's mean is raised by repetition


def test_mixed_profiles_in_one_batch_equal_each_alone(default_table, tmp_path) -> None:
    """Never batch-dependent: an item scores the same alone, with other items, under either profile."""
    engine = RewardEngine(default_table, idf=load_idf(_caption_idf(tmp_path)))
    truth, paraphrase, wrong = CAPTIONS[1]
    items = []
    for profile in ("robust", "mixed-r1", "robust"):
        for response in (paraphrase, wrong, "a .", truth):
            items.append(PreparedItem(response, prepare_ground_truth("open_ended", truth),
                                     ResolvedOptions(profile=profile)))
    together = [s.reward for s in engine.score(items)[0]]
    alone = [engine.score([item])[0][0].reward for item in items]
    assert together == pytest.approx(alone, abs=1e-6)
    assert together[:4] == pytest.approx(together[8:], abs=1e-9)
    assert together[:4] != pytest.approx(together[4:8], abs=1e-3)  # the profiles do differ


def test_rules_are_the_same_under_both_profiles(default_table) -> None:
    engine = RewardEngine(default_table)
    cases = [("mcq", "C", "The answer is (C)."), ("mcq", "C", "A B C D"),
             ("yes_no", "yes", "Yes, it is."), ("yes_no", "yes", "yes and no"),
             ("chart", "12", "12.05"), ("grounding", "[0,0,10,10]", "[0,0,10,5]")]
    for profile in PROFILE_NAMES:
        items = [PreparedItem(f"<think>x</think><answer>{r}</answer>", prepare_ground_truth(task, t),
                             ResolvedOptions(profile=profile)) for task, t, r in cases]
        assert [s.reward for s in engine.score(items)[0]] == pytest.approx([2.0, 1.0, 2.0, 1.0, 2.0, 1.5])


# ------------------------------------------------------------------------------------- idf files


def test_idf_file_counts_distinct_open_ended_truths(default_table, tmp_path) -> None:
    idf = load_idf(_caption_idf(tmp_path), default_table.tokenizer, default_table.vocab_size)
    assert idf.documents == 80 + len(CAPTIONS)  # the yes/no row is not a document
    the = default_table.tokenizer.token_to_id("the")
    dog = default_table.tokenizer.token_to_id("dog")
    weights = idf.weights(default_table.vocab_size)
    assert weights[the] < weights[dog] < weights[default_table.tokenizer.token_to_id("piano")]
    assert idf.df[the] == 80 + 1  # every template, and "... along the beach"
    assert idf.df[default_table.tokenizer.token_to_id("a")] == idf.documents  # in every truth


def test_repeated_truths_count_once(tmp_path, default_table) -> None:
    rows = [{"ground_truth": "<answer>a dog</answer>", "task_type": "caption"}] * 5
    rows += [{"ground_truth": "a cat"}]  # no task type: counted
    data = tmp_path / "rollouts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "idf.json"
    assert main(["idf", str(data), "-o", str(out), "--no-progress"]) == 0
    idf = load_idf(out)
    assert idf.documents == 2
    assert idf.df[default_table.tokenizer.token_to_id("a")] == 2


def test_idf_command_refuses_bad_input(tmp_path, capsys) -> None:
    data = tmp_path / "rules.jsonl"
    data.write_text(json.dumps({"ground_truth": "yes", "task_type": "yes_no"}) + "\n")
    assert main(["idf", str(data), "-o", str(tmp_path / "x.json"), "--no-progress"]) == 1
    assert "no open-ended ground truths" in capsys.readouterr().err
    (tmp_path / "bad.jsonl").write_text('{"ground_truth": "a dog", "task_type": "bogus"}\n')
    assert main(["idf", str(tmp_path / "bad.jsonl"), "-o", str(tmp_path / "y.json"), "--no-progress"]) == 1
    assert "bad.jsonl:1: field 'task_type'" in capsys.readouterr().err
    assert not (tmp_path / "y.json").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ("{not json", "not valid JSON"),
        ('{"format": "other"}', "not a mixed-reward-idf file"),
        ('{"format": "mixed-reward-idf", "version": 1, "documents": 3, "df": {"5": 9}, "tokenizer": {"hash": "x"}}',
         "bad df entry"),
    ],
)
def test_corrupt_idf_files_are_refused(tmp_path, content, message) -> None:
    path = tmp_path / "idf.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(IdfFileError) as info:
        load_idf(path)
    assert message in str(info.value) and str(path) in str(info.value)


def test_idf_from_another_tokenizer_is_refused(tmp_path, default_table) -> None:
    path = tmp_path / "idf.json"
    IdfTable(documents=3, df={5: 1}, tokenizer_hash="0123456789abcdef", tokenizer_source="qwen").save(path)
    with pytest.raises(IdfFileError, match="another tokenizer"):
        load_idf(path, default_table.tokenizer, default_table.vocab_size)
    IdfTable(documents=3, df={5: 1}, tokenizer_hash=tokenizer_hash(default_table.tokenizer)).save(path)
    assert load_idf(path, default_table.tokenizer, default_table.vocab_size).df == {5: 1}


@pytest.mark.parametrize("content", [None, "{corrupt"])
def test_serve_exits_2_naming_a_bad_idf_file(tmp_path, content) -> None:
    path = tmp_path / "missing.idf.json"
    if content is not None:
        path.write_text(content)
    proc = subprocess.run(
        [sys.executable, "-m", "reward_server", "serve", "--port", "0", "--profile", "robust", "--idf-path", str(path)],
        capture_output=True, text=True, timeout=120, env={**os.environ}, check=False,
    )
    assert proc.returncode == 2
    assert str(path) in proc.stderr and "idf file" in proc.stderr


# ------------------------------------------------------------------------------------------ HTTP


def test_http_profiles(default_table, tmp_path) -> None:
    from serving import running_server

    idf_path = _caption_idf(tmp_path)
    truth, paraphrase, _ = CAPTIONS[0]
    items = [{"response": r, "ground_truth": truth, "task_type": "caption"} for r in (paraphrase, "a .", truth)]
    with running_server(default_table, idf_path=str(idf_path)) as srv:
        info = httpx.get(srv.url + "/v1/info").json()
        assert info["defaults"]["profile"] == "mixed-r1"
        assert set(info["profiles"]) == {"mixed-r1", "robust"}
        assert info["profiles"]["mixed-r1"]["changes"] == []
        assert info["profiles"]["robust"]["changes"]
        assert info["profiles"]["robust"]["token_weights"]["documents"] == 84

        paper = httpx.post(srv.url + "/score", json={"items": items}).json()
        robust = httpx.post(srv.url + "/score", json={"items": items, "options": {"profile": "robust"}}).json()
        assert paper["profile"] == "mixed-r1" and robust["profile"] == "robust"
        engine = RewardEngine(default_table, idf=load_idf(idf_path))
        expected = _score(engine, [(truth, i["response"]) for i in items], profile="robust")
        assert [r["accuracy"] for r in robust["results"]] == pytest.approx(expected, abs=1e-6)
        assert robust["results"][2]["accuracy"] == 2.0
        assert robust["results"][1]["accuracy"] < robust["results"][0]["accuracy"]

        bad = httpx.post(srv.url + "/score", json={"items": items, "options": {"profile": "paper"}})
        assert bad.status_code == 422
        detail = bad.json()["error"]["details"][0]
        assert detail["field"] == "options.profile"
        assert "mixed-r1" in detail["message"] and "robust" in detail["message"]

        openrlhf = httpx.post(srv.url + "/get_reward?profile=robust", json={
            "query": ["Q " + truth], "prompts": ["Q "],
            "labels": [json.dumps({"ground_truth": truth, "task_type": "caption"})]})
        assert openrlhf.status_code == 200 and openrlhf.json()["extra_logs"]["accuracy"] == [2.0]

        metrics = httpx.get(srv.url + "/metrics").text
        assert 'reward_items_total{job="default",outcome="scored",profile="robust",task_type="open_ended"} 4.0' in metrics
        assert 'reward_items_total{job="default",outcome="scored",profile="mixed-r1",task_type="open_ended"} 3.0' in metrics


def test_server_default_profile(default_table) -> None:
    from serving import running_server

    truth = CAPTIONS[0][0]
    with running_server(default_table, profile="robust") as srv:
        body = httpx.post(srv.url + "/score", json={"items": [
            {"response": "a .", "ground_truth": truth, "task_type": "caption"}]}).json()
        assert body["profile"] == "robust"
        expected = _score(RewardEngine(default_table), [(truth, "a .")], profile="robust")[0]
        assert body["results"][0]["accuracy"] == pytest.approx(expected, abs=1e-6)


# ----------------------------------------------------------------------------------- offline CLI


def test_offline_score_with_profile(tmp_path, default_table) -> None:
    idf_path = _caption_idf(tmp_path)
    rows = [{"response": r, "ground_truth": t, "task_type": "caption"} for t, p, w in CAPTIONS for r in (p, w, "a .")]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    assert main(["score", str(src), str(out), "--profile", "robust", "--idf-path", str(idf_path),
                 "--format-weight", "0", "--no-progress"]) == 0
    got = [json.loads(line)["accuracy"] for line in out.read_text().splitlines()]
    engine = RewardEngine(default_table, idf=load_idf(idf_path))
    assert got == pytest.approx(_score(engine, [(r["ground_truth"], r["response"]) for r in rows], profile="robust"),
                                abs=1e-6)
    out2 = tmp_path / "out2.jsonl"
    assert main(["score", str(src), str(out2), "--profile", "robust", "--idf-path", str(tmp_path / "nope.json"),
                 "--no-progress"]) == 2
