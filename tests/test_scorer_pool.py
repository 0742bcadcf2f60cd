"""The worker pool's deadlines and chunks (reward_server/engine/pool.py), with a pooled plug-in
family whose answers say how to misbehave: ``fast``, ``slow`` (a Python loop past the deadline:
the worker's alarm stops it), ``stuck`` (signals blocked, as in a C call no signal reaches: pebble
kills the worker), ``crash`` (the worker dies), ``pid`` (the worker's process id) and ``bad`` (a
client error from the worker)."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import pytest

from reward_server.engine.pool import CHUNK_ITEMS, ScorerPool
from reward_server.rewards.registry import build_registry
from reward_server.rewards.rules import prepare_ground_truth
from reward_server.rewards.scoring import PreparedItem

TIMEOUT_S = 1.0

FAMILY = textwrap.dedent('''
    import os, signal, time
    from reward_server.rewards import InvalidGroundTruth, ResolvedOptions, RewardFamily, Runs, Score

    class Antics(RewardFamily):
        name = "antics"
        summary = "test family: misbehaves as the answer says"
        runs = Runs.POOL

        def parse_truth(self, text):
            return text

        def score(self, span, truth, options):
            if span == "slow":
                while True:
                    pass
            if span == "stuck":
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
                time.sleep(60)
            if span == "crash":
                os._exit(3)
            if span == "bad":
                raise InvalidGroundTruth("this truth cannot be read")
            if span == "pid":
                return Score(1.0, parsed=str(os.getpid()))
            return Score(1.0 if span == truth else 0.0, parsed=span)
''')


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    module = tmp_path_factory.mktemp("antics") / "antics.py"
    module.write_text(FAMILY)
    registry = build_registry([str(module)])
    scorer = ScorerPool(workers=2, timeout_s=TIMEOUT_S, modules=[str(module)])
    scorer.registry = registry
    scorer.score_blocking(_items(registry, ["fast"] * 4))  # workers started and warm
    yield scorer
    scorer.close()


def _items(registry, answers: list[str], truth: str = "fast") -> list[PreparedItem]:
    prepared = prepare_ground_truth("antics", truth, registry)
    return [PreparedItem(response=f"<answer>{answer}</answer>", truth=prepared) for answer in answers]


def test_an_item_past_its_deadline_is_stopped_in_its_worker_and_only_it_times_out(pool) -> None:
    before = pool.timeouts
    answers = ["fast", "slow", "fast", "x", "pid"]
    started = time.monotonic()
    scores = pool.score_blocking(_items(pool.registry, answers))
    took = time.monotonic() - started
    assert [(s.accuracy, s.timed_out) for s in scores] == [(1.0, False), (0.0, True), (1.0, False), (0.0, False),
                                                           (1.0, False)]
    assert pool.timeouts == before + 1
    assert took < 2 * TIMEOUT_S + 1.5, took  # one deadline, then the rest of its chunk sent again


def test_the_alarm_keeps_the_worker_and_a_stuck_one_is_killed_and_replaced(tmp_path: Path) -> None:
    module = tmp_path / "antics.py"
    module.write_text(FAMILY)
    registry = build_registry([str(module)])
    scorer = ScorerPool(workers=1, timeout_s=TIMEOUT_S, modules=[str(module)])
    try:
        def worker_pid() -> str:
            return scorer.score_blocking(_items(registry, ["pid"]))[0].parsed

        first = worker_pid()
        assert scorer.score_blocking(_items(registry, ["slow"]))[0].timed_out
        assert worker_pid() == first  # stopped by its alarm: the same warm worker serves on

        scores = scorer.score_blocking(_items(registry, ["fast", "stuck", "fast", "x"]))
        assert [(s.accuracy, s.timed_out) for s in scores] == [(1.0, False), (0.0, True), (1.0, False),
                                                               (0.0, False)]
        assert scorer.timeouts == 2
        assert worker_pid() != first  # a worker no signal reached was killed and replaced
    finally:
        scorer.close()


def test_a_worker_that_dies_under_an_item_costs_that_item_only(pool) -> None:
    """A crash in the verifier is a response like any other: it scores 0 (timed_out), never a
    failed request, and the pool serves on with a new worker."""
    before = pool.timeouts
    scores = pool.score_blocking(_items(pool.registry, ["fast", "crash", "fast", "x"]))
    assert [(s.accuracy, s.timed_out) for s in scores] == [(1.0, False), (0.0, True), (1.0, False), (0.0, False)]
    assert pool.timeouts == before + 1
    assert pool.score_blocking(_items(pool.registry, ["fast"]))[0].accuracy == 1.0


def test_a_client_error_belongs_to_its_item(pool) -> None:
    futures = pool.submit_all(_items(pool.registry, ["fast", "bad", "x"]))
    assert futures[0].result().accuracy == 1.0
    with pytest.raises(Exception, match="this truth cannot be read"):
        futures[1].result()
    assert futures[2].result().accuracy == 0.0


def test_identical_items_are_verified_once_and_each_gets_its_score(pool) -> None:
    answers = ["fast", "x"] * (CHUNK_ITEMS * 3)
    futures = pool.submit_all(_items(pool.registry, answers))
    assert [f.result().accuracy for f in futures] == [1.0, 0.0] * (CHUNK_ITEMS * 3)
    assert len({id(f) for f in futures}) == 2


def test_a_closed_pool_refuses_instead_of_starting_again(tmp_path: Path) -> None:
    module = tmp_path / "antics.py"
    module.write_text(FAMILY)
    registry = build_registry([str(module)])
    scorer = ScorerPool(workers=1, timeout_s=TIMEOUT_S, modules=[str(module)])
    assert scorer.score_blocking(_items(registry, ["fast"]))[0].accuracy == 1.0
    scorer.close()
    with pytest.raises(RuntimeError, match="closed"):
        scorer.score_blocking(_items(registry, ["fast"]))
