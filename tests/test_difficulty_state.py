"""Per-prompt posteriors, decay, Thompson sampling and the SQLite store (no HTTP)."""

from __future__ import annotations

import sqlite3
import threading

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
        assert again.get("b")["alpha"] == 2.0 and again.clock == 3
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
