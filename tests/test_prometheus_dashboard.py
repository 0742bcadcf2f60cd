"""The dashboard against a real Prometheus: every query is valid PromQL, returns data, and the data
matches the traffic (counts and reward means computed from the service's own responses).

Set-up: the real service (uvicorn on loopback, its own instance so other tests' traffic does not
count), a real Prometheus scraping it every second with the deploy scrape config and alert rules,
one scrape before the traffic (so every series starts at zero inside the rate windows), then a
mixed batch of every task type with groups, a burst of one-item requests and two client errors.
"""

from __future__ import annotations

import math
import subprocess
from typing import Any

import pytest
from prometheus_harness import (
    DEPLOY,
    SCRAPE_CONFIG,
    Expected,
    Prometheus,
    dashboard_queries,
    ensure_prometheus,
    panel_expr,
    running_prometheus,
    send_traffic,
)
from serving import RunningServer, running_server

from reward_server.rewards.registry import default_registry

TASKS = tuple(default_registry().names())  # every family: the traffic has items of each


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


@pytest.fixture(scope="module")
def stack(default_table: Any) -> Any:
    ensure_prometheus()
    with (
        running_server(default_table) as server,
        running_prometheus(server.url.removeprefix("http://")) as prometheus,
    ):
        # One scrape before any traffic: every pre-created series is recorded at zero.
        prometheus.wait_for("reward_items_total", lambda result: len(result) > 0)
        expected = send_traffic(server.url)
        total = sum(expected.items.values())
        prometheus.wait_for(
            'sum(reward_items_total{outcome="scored"})',
            lambda result: bool(result) and float(result[0]["value"][1]) == total,
        )
        prometheus.wait_for(
            "sum(reward_errors_total)", lambda result: bool(result) and float(result[0]["value"][1]) >= 2
        )
        yield server, prometheus, expected


def test_every_dashboard_query_is_valid_and_returns_data(stack: tuple[RunningServer, Prometheus, Expected]) -> None:
    _, prometheus, _ = stack
    queries = dashboard_queries()
    assert len(queries) >= 30
    failures = []
    for title, expr in queries:
        try:
            result = prometheus.query(expr)
        except AssertionError as exc:
            failures.append(f"{title}: {expr}\n    invalid: {exc}")
            continue
        if not result:
            failures.append(f"{title}: {expr}\n    returned no data")
    assert not failures, "\n".join(failures)


def test_item_counts_match_the_traffic(stack: tuple[RunningServer, Prometheus, Expected]) -> None:
    _, prometheus, expected = stack
    assert set(expected.items) == set(TASKS)
    since_start = prometheus.values(panel_expr("Items scored since start"), "task_type")
    assert since_start == {(task,): float(count) for task, count in expected.items.items()}
    per_second = prometheus.values(panel_expr("Items scored per second by task type"), "task_type")
    assert all(per_second[(task,)] > 0 for task in TASKS), per_second
    not_scored = prometheus.values(panel_expr("Items not scored per second"), "task_type", "outcome")
    assert not_scored and all(value == 0 for value in not_scored.values())


def test_reward_means_match_the_responses(stack: tuple[RunningServer, Prometheus, Expected]) -> None:
    _, prometheus, expected = stack
    table = prometheus.values(panel_expr("Mean per task type and component since start"), "task_type", "component")
    for task, component in expected.values:
        assert close(table[(task, component)], expected.mean(task, component)), (task, component)
    # Over the 5m window: the window starts at the zero sample, so rate(sum)/rate(count) is exact.
    for title, component in (
        ("Mean reward by task type", "reward"),
        ("Mean accuracy by task type", "accuracy"),
        ("Format pass rate by task type", "format"),
    ):
        means = prometheus.values(panel_expr(title), "task_type")
        for task in TASKS:
            assert close(means[(task,)], expected.mean(task, component)), (title, task)
    sub_scores = prometheus.values(panel_expr("Sub-scores by task type"), "task_type", "component")
    for task, component in (("open_ended", "bmas_forward"), ("open_ended", "bmas_backward"),
                            ("temporal_grounding", "tiou"), ("temporal_grounding", "boundary_penalty")):
        assert close(sub_scores[(task, component)], expected.mean(task, component)), component


def test_reward_heatmaps_match_the_responses(stack: tuple[RunningServer, Prometheus, Expected]) -> None:
    _, prometheus, expected = stack
    for task in TASKS:
        for component in ("reward", "accuracy"):
            buckets = prometheus.values(panel_expr(f"Distribution: {task} {component}"), "le")
            # One query, one evaluation time: every bucket's rate shares the window's extrapolation,
            # so bucket / +Inf is exactly the fraction of items at or below the bound.
            values = expected.values[(task, component)]
            total = buckets[("+Inf",)]
            assert total > 0, (task, component)
            for (le,), rate in buckets.items():
                at_or_below = sum(value <= float(le) for value in values) / len(values)
                assert close(rate / total, at_or_below), (task, component, le)


def test_group_statistics_match_the_responses(stack: tuple[RunningServer, Prometheus, Expected]) -> None:
    _, prometheus, expected = stack
    assert expected.zero_variance["mixed"] == 1 and expected.groups["yes_no"] == 2
    overall = prometheus.values(panel_expr("Zero-variance fraction since start"))
    assert close(overall[()], sum(expected.zero_variance.values()) / sum(expected.groups.values()))
    fractions = prometheus.values(panel_expr("Zero-variance group fraction by task type"), "task_type")
    for task, groups in expected.groups.items():
        assert close(fractions[(task,)], expected.zero_variance[task] / groups), task
    per_second = prometheus.values(panel_expr("Groups per second by task type"), "task_type")
    assert all(per_second[(task,)] > 0 for task in expected.groups)


def test_latency_errors_batches_and_table(stack: tuple[RunningServer, Prometheus, Expected]) -> None:
    server, prometheus, expected = stack
    for ref in ("A", "B", "C"):
        (latency,) = prometheus.values(panel_expr("Scoring latency p50 / p95 / p99", ref)).values()
        assert 0 < latency <= 30
        (wait,) = prometheus.values(panel_expr("Queue wait p50 / p95 / p99", ref)).values()
        assert 0 <= wait <= 30
    errors = prometheus.values(panel_expr("Errors per second by reason"), "reason")
    assert errors[("invalid_item",)] > 0 and errors[("invalid_request",)] > 0
    assert errors[("internal_error",)] == 0
    requests = prometheus.values(panel_expr("Requests per second by endpoint"), "endpoint")
    assert requests[("/score",)] > 0 and ("/metrics",) not in requests
    (mean_batch,) = prometheus.values(panel_expr("Items per device batch")).values()
    assert mean_batch >= 1
    tokens = prometheus.values(panel_expr("Tokens scored per second"), "side")
    assert tokens[("response",)] > 0 and tokens[("ground_truth",)] > 0

    info = server.app.state.service.table.info()
    table = prometheus.query(panel_expr("Embedding table"))
    assert [sample["metric"]["content_hash"] for sample in table] == [info["content_hash"]]
    assert table[0]["metric"]["vocab_size"] == str(info["vocab_size"])
    assert prometheus.values(panel_expr("Ready replicas", "A")) == {(): 1.0}
    assert prometheus.values(panel_expr("Checkpoints per table name")) == {(): 1.0}
    assert expected.requests == 1 + 12


def test_alert_rules_load_and_evaluate(stack: tuple[RunningServer, Prometheus, Expected]) -> None:
    _, prometheus, _ = stack

    def evaluated(_: Any) -> bool:
        rules = [rule for group in prometheus.api("rules")["groups"] for rule in group["rules"]]
        return bool(rules) and all(not rule["lastEvaluation"].startswith("0001") for rule in rules)

    prometheus.wait_for("vector(1)", evaluated, timeout=20)
    rules = [rule for group in prometheus.api("rules")["groups"] for rule in group["rules"]]
    assert len(rules) >= 8
    unhealthy = [(rule["name"], rule.get("lastError")) for rule in rules if rule["health"] != "ok"]
    assert not unhealthy
    firing = [rule["name"] for rule in rules if rule.get("state") == "firing"]
    assert "RewardServiceNotReady" not in firing and "RewardServerErrors" not in firing


def test_promtool_accepts_the_scrape_config_and_rules() -> None:
    _, promtool = ensure_prometheus()
    config = subprocess.run(
        [promtool, "check", "config", str(SCRAPE_CONFIG)], capture_output=True, text=True, check=False
    )
    assert config.returncode == 0, config.stdout + config.stderr
    rules = subprocess.run(
        [promtool, "check", "rules", str(DEPLOY / "prometheus" / "alerts.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert rules.returncode == 0, rules.stdout + rules.stderr
