"""Per-prompt posteriors, decay, Thompson sampling and the SQLite store (no HTTP)."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from reward_server.difficulty import posterior
from reward_server.difficulty.correctness import Thresholds, is_correct
from reward_server.difficulty.posterior import DecayParams
from reward_server.difficulty.sampler import thompson_select
from reward_server.difficulty.store import DifficultyStore, Observation
from reward_server.rewards.rules import prepare_ground_truth
from reward_server.rewards.scoring import ItemReward, PreparedItem

NO_DECAY = DecayParams(prior_alpha=1.0, prior_beta=1.0, local_decay=1.0, stale_half_life=0.0)


def test_conjugate_update_equals_hand_computation() -> None:
    state = posterior.fresh("p", NO_DECAY)
    for clock, ok in enumerate([True, False, True, True], start=1):
        state = posterior.observe(state, ok, clock, NO_DECAY, now=100.0)
    # Beta(1, 1) + 3 successes, 1 failure = Beta(4, 2)
    assert (state.alpha, state.beta, state.n, state.successes) == (4.0, 2.0, 4, 3)
    assert posterior.mean(state.alpha, state.beta) == pytest.approx(4 / 6)


def test_local_decay_shrinks_evidence_before_each_outcome() -> None:
    params = DecayParams(prior_alpha=2.0, prior_beta=1.0, local_decay=0.5, stale_half_life=0.0)
    state = posterior.fresh("p", params)
    state = posterior.observe(state, True, 1, params, 0.0)  # evidence (0,0)*0.5 + (1,0): alpha 3, beta 1
    assert (state.alpha, state.beta) == (3.0, 1.0)
    state = posterior.observe(state, False, 2, params, 0.0)  # evidence (1,0)*0.5 + (0,1): alpha 2.5, beta 2
    assert (state.alpha, state.beta) == (2.5, 2.0)


def test_stale_decay_halves_evidence_per_half_life_of_global_clock() -> None:
    params = DecayParams(prior_alpha=1.0, prior_beta=1.0, local_decay=1.0, stale_half_life=100.0)
    state = posterior.PromptState("p", alpha=9.0, beta=5.0, n=12, successes=8, clock=50, updated_at=0.0)
    assert posterior.at_clock(state, 50, params) == (9.0, 5.0)
    assert posterior.at_clock(state, 150, params) == pytest.approx((1 + 8 / 2, 1 + 4 / 2))
    assert posterior.at_clock(state, 250, params) == pytest.approx((1 + 8 / 4, 1 + 4 / 4))
    # the next observation starts from the decayed values: (1 + 2, 1 + 1) + one success
    after = posterior.observe(state, True, 250, params, 0.0)
    assert (after.alpha, after.beta) == pytest.approx((4.0, 2.0))


def _judged(task: str, truth: str, accuracy: float, limits: Thresholds, **sub_scores: float) -> bool:
    item = PreparedItem("", prepare_ground_truth(task, truth))
    return is_correct(item, ItemReward(accuracy, accuracy, 0.0, sub_scores), limits)


def test_correctness_thresholds_per_task_type() -> None:
    limits = Thresholds({"grounding": 0.5, "open_ended": 0.75})
    assert _judged("yes_no", "yes", 1.0, limits)
    assert not _judged("mcq", "A", 0.0, limits)
    assert _judged("grounding", "[0, 0, 1, 1]", 0.5, limits)
    assert not _judged("grounding", "[0, 0, 1, 1]", 0.49, limits)
    assert not _judged("grounding", "[0, 0, 1, 1]", 0.5, Thresholds({"grounding": 0.6}))  # the setting moves it
    assert _judged("open_ended", "a dog", 1.6, limits, bmas_forward=0.8, bmas_backward=0.8)  # mean 0.8, any reduction
    assert not _judged("open_ended", "a dog", 1.4, limits, bmas_forward=0.9, bmas_backward=0.5)  # mean 0.7


def test_thompson_prefers_uncertain_middle_and_is_seedable() -> None:
    # solved (p ~ 0.99), hopeless (p ~ 0.01) and two near 1/2
    alphas, betas = [200.0, 2.0, 50.0, 30.0], [2.0, 200.0, 50.0, 30.0]
    picks = [thompson_select(alphas, betas, 2, seed=s) for s in range(50)]
    assert all(sorted(p) == [2, 3] for p in picks)
    assert thompson_select(alphas, betas, 4, seed=7) == thompson_select(alphas, betas, 4, seed=7)
    assert sorted(thompson_select(alphas, betas, 4, seed=7)) == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        thompson_select(alphas, betas, 5)


def test_store_survives_reopen_and_runs_in_wal(tmp_path) -> None:
    path = tmp_path / "state.db"
    store = DifficultyStore(path, NO_DECAY)
    store.record([Observation("a", True), Observation("a", False), Observation("b", True)])
    store.register_pool("train", ["a", "b", "c"]).result()
    store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    again = DifficultyStore(path, NO_DECAY)
    try:
        assert again.get("a") == {**again.get("a"), "alpha": 2.0, "beta": 2.0, "n": 2, "successes": 1}
        assert again.get("b")["alpha"] == 2.0 and again.clock() == 3
        assert again.pool("train") == ["a", "b", "c"]
        assert again.get("c") is None
    finally:
        again.close()


def test_concurrent_updates_to_one_prompt_lose_nothing(tmp_path) -> None:
    store = DifficultyStore(tmp_path / "state.db", NO_DECAY, synchronous="normal")
    threads, per_thread = 8, 50

    def work(index: int) -> None:
        for j in range(per_thread):
            store.record([Observation("shared", (index + j) % 3 == 0)])

    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    successes = sum((i + j) % 3 == 0 for i in range(threads) for j in range(per_thread))
    state = store.get("shared")
    assert state["n"] == threads * per_thread and state["successes"] == successes
    assert (state["alpha"], state["beta"]) == (1.0 + successes, 1.0 + threads * per_thread - successes)
    store.close()


def test_jobs_never_share_posteriors_pools_or_clocks(tmp_path) -> None:
    store = DifficultyStore(tmp_path / "state.db", NO_DECAY)
    try:
        store.record([Observation("p", True), Observation("p", True)], job="a")
        store.record([Observation("p", False)], job="b")
        store.record([Observation("p", True), Observation("q", False), Observation("q", False)])  # default job
        store.register_pool("train", ["p", "q"], job="a").result()
        assert {k: store.get("p", "a")[k] for k in ("job", "alpha", "beta", "n", "successes")} == {
            "job": "a", "alpha": 3.0, "beta": 1.0, "n": 2, "successes": 2}
        assert {k: store.get("p", "b")[k] for k in ("job", "alpha", "beta", "n", "successes")} == {
            "job": "b", "alpha": 1.0, "beta": 2.0, "n": 1, "successes": 0}
        assert store.get("p")["n"] == 1 and store.get("q", "a") is None
        # each job's clock counts its own outcomes: another job's training never decays these
        assert (store.clock("a"), store.clock("b"), store.clock(), store.clock("nobody")) == (2, 1, 3, 0)
        assert store.pool("train", "a") == ["p", "q"] and store.pool("train") is None
        assert [r["prompt_id"] for r in store.export_rows("a")] == ["p"]
        assert [(r["job"], r["prompt_id"]) for r in store.export_rows()] == [("default", "p"), ("default", "q")]
        assert store.jobs() == ["a", "b", "default"]
        assert store.summary()["prompts"] == 4  # the metrics count (job, prompt) pairs
    finally:
        store.close()


def test_the_store_default_job_is_the_services() -> None:
    from reward_server.difficulty.store import DEFAULT_JOB
    from reward_server.service.auth import DEFAULT_JOB as SERVICE_DEFAULT

    assert DEFAULT_JOB == SERVICE_DEFAULT == "default"


# The schema every state file had before per-job state (verbatim from the first release, a80feef).
OLD_SCHEMA = """
CREATE TABLE IF NOT EXISTS prompts (
    prompt_id TEXT PRIMARY KEY,
    alpha REAL NOT NULL,
    beta REAL NOT NULL,
    n INTEGER NOT NULL,
    successes INTEGER NOT NULL,
    clock INTEGER NOT NULL,
    updated_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pools (
    name TEXT NOT NULL,
    position INTEGER NOT NULL,
    prompt_id TEXT NOT NULL,
    PRIMARY KEY (name, position)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
"""


def old_state_file(path, extra_sql: str = "") -> None:
    """A state file as the old service left it: WAL, two prompts, one pool, the global clock at 12."""
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(OLD_SCHEMA + extra_sql)
    db.executemany("INSERT INTO prompts VALUES (?, ?, ?, ?, ?, ?, ?)", [
        ("p1", 4.0, 2.0, 4, 3, 9, 1700000000.5), ("p2", 1.0, 3.0, 2, 0, 12, 1700000100.25)])
    db.executemany("INSERT INTO pools VALUES (?, ?, ?)", [("train", 0, "p2"), ("train", 1, "p1"), ("train", 2, "p3")])
    db.execute("INSERT INTO meta VALUES ('clock', '12')")
    db.commit()
    db.close()


def test_an_old_single_job_file_is_migrated_in_place(tmp_path) -> None:
    path = tmp_path / "old.db"
    old_state_file(path)
    store = DifficultyStore(path, NO_DECAY)
    try:
        assert store.migrated_from == 1
        assert store.get("p1") == {"job": "default", "prompt_id": "p1", "alpha": 4.0, "beta": 2.0, "n": 4,
                                   "successes": 3, "estimated_p": 4 / 6, "last_update": 1700000000.5,
                                   "last_update_clock": 9}
        assert store.get("p2")["last_update_clock"] == 12 and store.clock() == 12
        assert store.pool("train") == ["p2", "p1", "p3"]
        store.record([Observation("p1", False)])  # the default job's clock goes on from the old one
        store.record([Observation("p1", True)], job="other")  # the same id in another job: a new row
        assert (store.get("p1")["n"], store.get("p1")["last_update_clock"], store.clock()) == (5, 13, 13)
        assert store.get("p1", "other")["n"] == 1
    finally:
        store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("2",)
        assert db.execute("SELECT value FROM meta WHERE key = 'clock'").fetchone() is None
        pk = sorted((row[5], row[1]) for row in db.execute("PRAGMA table_info(prompts)") if row[5])
        assert [name for _, name in pk] == ["job", "prompt_id"]
        assert sorted(row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")) == [
            "applied_keys", "clocks", "meta", "pools", "prompts"]
        assert db.execute("SELECT job, prompt_id, n FROM prompts ORDER BY job, prompt_id").fetchall() == [
            ("default", "p1", 5), ("default", "p2", 2), ("other", "p1", 1)]
    again = DifficultyStore(path, NO_DECAY)  # a migrated file opens as it is
    try:
        assert again.migrated_from is None and again.get("p1")["n"] == 5 and again.pool("train") == ["p2", "p1", "p3"]
    finally:
        again.close()


def test_a_failed_migration_leaves_the_old_file_as_it_was(tmp_path) -> None:
    """The tables are rebuilt in one transaction: when a step fails (here the name the old pools
    table is moved to is taken), nothing of it stays, and the old service could still open it."""
    from reward_server.difficulty.store import NewerSchema

    path = tmp_path / "old.db"
    old_state_file(path, "CREATE TABLE pools_v1 (x);")
    with pytest.raises(sqlite3.OperationalError, match="pools_v1"):
        DifficultyStore(path, NO_DECAY)
    with sqlite3.connect(path) as db:
        assert [row[1] for row in db.execute("PRAGMA table_info(prompts)")] == [
            "prompt_id", "alpha", "beta", "n", "successes", "clock", "updated_at"]
        assert db.execute("SELECT count(*) FROM prompts").fetchone() == (2,)
        assert db.execute("SELECT key, value FROM meta").fetchall() == [("clock", "12")]
        db.execute("DROP TABLE pools_v1")
    migrated = DifficultyStore(path, NO_DECAY)  # the obstacle gone, the next open migrates it
    migrated.close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    with pytest.raises(NewerSchema, match="state schema 3 is newer than this service's"):
        DifficultyStore(path, NO_DECAY)


def test_an_idempotency_key_is_applied_once_per_job(tmp_path) -> None:
    path = tmp_path / "state.db"
    store = DifficultyStore(path, NO_DECAY)
    group = [Observation("p", True), Observation("p", False), Observation("p", True)]
    try:
        assert store.record(group, "a", key="req-1") is True
        assert store.record(group, "a", key="req-1") is False  # the retry: nothing counted again
        assert (store.get("p", "a")["n"], store.get("p", "a")["successes"], store.clock("a")) == (3, 2, 3)
        assert store.record(group, "a", key="req-2") is True  # another request
        assert store.record(group, "b", key="req-1") is True  # keys are scoped by job
        assert store.record(group, "a") is True and store.record(group, "a") is True  # no key: as before
        assert (store.get("p", "a")["n"], store.get("p", "b")["n"]) == (12, 3)
        # the same key from many threads at once (retries racing on several replicas): applied once
        futures = [store.submit([Observation("r", True)], "a", key="racing") for _ in range(50)]
        assert sorted(f.result() for f in futures) == [False] * 49 + [True]
        assert store.get("r", "a")["n"] == 1
    finally:
        store.close()
    reopened = DifficultyStore(path, NO_DECAY)  # applied keys are durable with the updates they guard
    try:
        assert reopened.record(group, "a", key="req-1") is False and reopened.get("p", "a")["n"] == 12
    finally:
        reopened.close()


def test_applied_keys_expire_by_age_and_by_count(tmp_path) -> None:
    path = tmp_path / "state.db"
    store = DifficultyStore(path, NO_DECAY, max_keys=3)
    one = [Observation("p", True)]
    try:
        for key in ("k1", "k2", "k3", "k4", "k5"):
            assert store.record(one, key=key)
        with sqlite3.connect(path) as db:
            assert [row[0] for row in db.execute("SELECT key FROM applied_keys ORDER BY rowid")] == ["k3", "k4", "k5"]
        assert store.record(one, key="k5") is False  # among the newest three: still known
        assert store.record(one, key="k1") is True  # forgotten: applied again
        assert store.get("p")["n"] == 6
    finally:
        store.close()
    store = DifficultyStore(tmp_path / "aged.db", NO_DECAY, key_retention_s=0.2)
    try:
        assert store.record(one, key="old") and store.record(one, key="old") is False
        time.sleep(0.3)
        assert store.record(one, key="old") is True  # older than the retention: a new request
        assert store.get("p")["n"] == 2
    finally:
        store.close()
