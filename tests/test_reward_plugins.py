"""Reward families from outside the package (SPEC §14): a file (--rewards-module), an installed
entry point, and the start-up error when two families claim one name. Real servers, real
subprocesses, a real distribution on sys.path for the entry point."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from serving import server_process

from reward_server.errors import EXIT_USAGE
from reward_server.rewards.registry import ENTRY_POINT_GROUP, FamilyClash, FamilyRegistry, build_registry

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "rewards" / "exact_match.py"


@contextmanager
def served(*args: str, pythonpath: Path | None = None) -> Iterator[str]:
    """``reward-server serve ARGS`` in its own process; ``pythonpath`` first on its path (entry
    points are read when the server starts)."""
    env = {"PYTHONPATH": os.pathsep.join([str(pythonpath), *sys.path])} if pythonpath is not None else None
    with server_process(*args, env=env) as srv:
        yield srv.url


def test_the_example_is_served_by_reward_server_serve() -> None:
    """`reward-server serve --rewards-module examples/rewards/exact_match.py`, as a user starts it."""
    with served("--rewards-module", str(EXAMPLE)) as url:
        items = [
            {"id": 1, "response": "<think>x</think><answer>  Paris   FRANCE </answer>", "ground_truth": "paris france",
             "task_type": "exact_match"},
            {"id": 2, "response": "<answer>Paris</answer>", "ground_truth": "paris france", "task_type": "EM"},
            {"id": 3, "response": "yes", "ground_truth": "yes", "task_type": "yes_no"},
        ]
        body = httpx.post(url + "/score", json={"items": items, "options": {"explain": True}}, timeout=60).json()
        results = body["results"]
        assert [(r["task_type"], r["accuracy"], r["reward"]) for r in results] == [
            ("exact_match", 1.0, 2.0), ("exact_match", 0.0, 0.0), ("yes_no", 1.0, 1.0)
        ]
        assert results[0]["parsed"] == "paris france" and results[2]["parsed"] == "yes"
        info = httpx.get(url + "/v1/info").json()
        assert "exact_match" in info["task_types"]
        assert info["families"]["exact_match"]["origin"] == str(EXAMPLE)
        assert info["families"]["exact_match"]["aliases"] == ["em"]
        enum = httpx.get(url + "/openapi.json").json()["components"]["schemas"]["RequestItem"]["properties"]
        assert {"exact_match", "em"} <= set(enum["task_type"]["enum"])
        metrics = httpx.get(url + "/metrics").text
        assert 'reward_items_total{job="default",outcome="scored",profile="mixed-r1",task_type="exact_match"} 2.0' in metrics
        bad = httpx.post(url + "/score", json={"items": [
            {"response": "x", "ground_truth": "   ", "task_type": "exact_match"}]}).json()["error"]
        assert bad["type"] == "invalid_item" and bad["details"][0]["field"] == "ground_truth"


def test_a_name_clash_stops_the_start_naming_both(tmp_path: Path) -> None:
    clash = tmp_path / "clash.py"
    clash.write_text(textwrap.dedent("""
        from reward_server.rewards import ResolvedOptions, RewardFamily, Score

        class Captions(RewardFamily):
            name = "my_captions"
            aliases = ("caption",)  # already open_ended's

            def score(self, span: str, truth: str, options: ResolvedOptions) -> Score:
                return Score(0.0)
    """))
    with pytest.raises(FamilyClash) as info:
        build_registry([str(clash)])
    message = info.value.message
    assert "'my_captions'" in message and "'caption'" in message and "'open_ended' (built-in)" in message
    assert str(clash) in message
    run = subprocess.run([sys.executable, "-m", "reward_server", "serve", "--rewards-module", str(clash)],
                         capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == EXIT_USAGE
    assert run.stderr.strip().splitlines() == [f"reward-server: {message}"]
    twice = subprocess.run([sys.executable, "-m", "reward_server", "serve", "--rewards-module", str(EXAMPLE),
                            "--rewards-module", str(EXAMPLE)], capture_output=True, text=True, timeout=120, check=False)
    assert twice.returncode == EXIT_USAGE and "'exact_match'" in twice.stderr


def test_an_installed_entry_point_is_a_family(tmp_path: Path) -> None:
    """A distribution on sys.path whose entry point (group mixed_reward.rewards) names a family."""
    site = tmp_path / "site"
    (site / "shout_reward").mkdir(parents=True)
    (site / "shout_reward" / "__init__.py").write_text(textwrap.dedent("""
        from reward_server.rewards import ResolvedOptions, RewardFamily, Score

        class Shout(RewardFamily):
            name = "shout"
            summary = "1 when the answer is in capitals"

            def score(self, span: str, truth: str, options: ResolvedOptions) -> Score:
                return Score(1.0 if span and span == span.upper() else 0.0)
    """))
    dist = site / "shout_reward-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: shout-reward\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nshout = shout_reward:Shout\n")
    sys.path.insert(0, str(site))
    try:
        registry = FamilyRegistry()
        registry.add_entry_points()
        assert registry.names() == ["shout"] and registry.origin("shout") == "entry point shout (shout-reward)"
        with served(pythonpath=site) as url:
            scored = httpx.post(url + "/score", json={"items": [
                {"response": "<answer>YES</answer>", "ground_truth": "x", "task_type": "shout"}]}).json()
            assert scored["results"][0]["accuracy"] == 1.0
    finally:
        sys.path.remove(str(site))
