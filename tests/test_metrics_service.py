"""GET /metrics on the real server: names, units and label sets per SPEC §12, and values that equal
the traffic sent (counts per task type, reward sums and buckets from the responses themselves)."""

from __future__ import annotations

import asyncio
import json
import math
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_harness import COMPONENTS, send_traffic
from serving import running_server

from reward_server.engine.batcher import QueueFull
from reward_server.rewards.family import Runs
from reward_server.rewards.groups import summarise_groups
from reward_server.rewards.registry import default_registry
from reward_server.service.metrics import (
    UNIT_BUCKETS,
    ServiceMetrics,
    TableInfoCollector,
    route_paths,
)

TASKS = tuple(default_registry().names())
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(url: str) -> Samples:
    response = httpx.get(f"{url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(response.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def label_values(samples: Samples, name: str, label: str) -> set[str]:
    return {dict(key)[label] for (sample, key) in samples if sample == name and label in dict(key)}


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


@pytest.fixture(scope="module")
def traffic(default_table: Any) -> Any:
    """A server of its own (exact counts), before and after the harness's mixed traffic."""
    with running_server(default_table) as server:
        before = scrape(server.url)
        expected = send_traffic(server.url)
        yield server, before, expected, scrape(server.url)


def test_every_series_exists_at_zero_before_any_traffic(traffic: Any) -> None:
    _, before, _, _ = traffic
    for task in TASKS:
        for outcome in ("scored", "rejected", "failed"):
            assert value(before, "reward_items_total", task_type=task, outcome=outcome, profile="mixed-r1", job="default") == 0
        assert value(before, "reward_value_count", task_type=task, component="reward", profile="mixed-r1") == 0
        assert value(before, "reward_groups_total", task_type=task) == 0
    assert value(before, "reward_errors_total", reason="overloaded") == 0
    assert value(before, "reward_requests_total", endpoint="/score", outcome="success") == 0
    assert value(before, "reward_request_duration_seconds_count", endpoint="/score") == 0


def test_names_follow_prometheus_conventions(traffic: Any) -> None:
    _, _, _, after = traffic
    names = {name for name, _ in after}
    assert all(name.startswith("reward_") for name in names), names
    assert not any(name.endswith("_created") for name in names)
    for required in (
        "reward_request_duration_seconds_bucket",
        "reward_queue_wait_seconds_bucket",
        "reward_batch_items_bucket",
        "reward_batch_tokens_bucket",
        "reward_items_total",
        "reward_errors_total",
        "reward_value_bucket",
        "reward_group_std_bucket",
        "reward_zero_variance_groups_total",
        "reward_groups_total",
        "reward_in_flight_requests",
        "reward_queue_depth_items",
        "reward_table_info",
        "reward_build_info",
        "reward_tokens_total",
        "reward_ready",
    ):
        assert required in names, required
    les = label_values(after, "reward_request_duration_seconds_bucket", "le")
    assert min(float(le) for le in les) == 0.001 and "30.0" in les and "+Inf" in les


def test_items_and_rewards_equal_the_responses(traffic: Any) -> None:
    _, _, expected, after = traffic
    for task in TASKS:
        scored = value(after, "reward_items_total", task_type=task, outcome="scored", profile="mixed-r1", job="default")
        assert scored == expected.items[task]
    for (task, component), values in expected.values.items():
        labels = {"task_type": task, "component": component, "profile": "mixed-r1"}
        assert value(after, "reward_value_count", **labels) == len(values)
        assert close(value(after, "reward_value_sum", **labels), math.fsum(values)), labels
        for le in label_values(after, "reward_value_bucket", "le"):
            key = ("reward_value_bucket", frozenset({**labels, "le": le}.items()))
            if key in after:
                assert after[key] == sum(v <= float(le) for v in values), (labels, le)
    # each family's items carry its own sub-scores (open-ended both BMAS terms, temporal grounding
    # tiou and boundary_penalty) and no other family's
    for task in TASKS:
        family = default_registry()[task]
        assert {component for t, component in expected.values if t == task} == {
            "reward", "accuracy", "format", *family.sub_scores
        }, task
    assert set(COMPONENTS) == {component for _, component in expected.values}


def test_bucket_bounds_fit_each_range(traffic: Any) -> None:
    _, _, _, after = traffic

    def bounds(task: str, component: str) -> tuple[float, ...]:
        return tuple(
            sorted(
                float(dict(key)["le"])
                for name, key in after
                if name == "reward_value_bucket"
                and dict(key)["task_type"] == task
                and dict(key)["component"] == component
                and dict(key)["profile"] == "mixed-r1"
                and dict(key)["le"] != "+Inf"
            )
        )

    # from each family's declared ranges: accuracy, accuracy + format (weight 1), each sub-score
    assert bounds("yes_no", "accuracy") == UNIT_BUCKETS == tuple(k / 10 for k in range(11))
    assert bounds("grounding", "accuracy") == UNIT_BUCKETS
    assert bounds("mcq", "reward") == tuple(round(k / 10, 6) for k in range(21))  # 0 .. 2 by 0.1
    assert bounds("open_ended", "accuracy") == tuple(round(-2 + k / 5, 6) for k in range(21))  # -2 .. 2 by 0.2
    assert bounds("open_ended", "reward") == tuple(round(-2 + k / 4, 6) for k in range(21))  # -2 .. 3 by 0.25
    assert bounds("open_ended", "bmas_forward") == tuple(round(-1 + k / 10, 6) for k in range(21))
    assert bounds("chart", "bmas_forward") == ()  # no such series: rules have no BMAS terms


def test_groups_queue_batches_and_errors(traffic: Any) -> None:
    _, _, expected, after = traffic
    for task in (*TASKS, "mixed"):
        assert value(after, "reward_groups_total", task_type=task) == expected.groups[task], task
        assert value(after, "reward_zero_variance_groups_total", task_type=task) == expected.zero_variance[task]
    assert sum(
        value(after, "reward_group_std_count", task_type=task) for task in (*TASKS, "mixed")
    ) == len(expected.group_stds)
    assert close(
        sum(value(after, "reward_group_std_sum", task_type=task) for task in (*TASKS, "mixed")),
        math.fsum(expected.group_stds),
    )
    scored_requests = expected.requests
    assert value(after, "reward_queue_wait_seconds_count", job="default") == scored_requests
    # Pooled families' items (math) go to the worker pool directly, never through a device batch.
    batched_items = sum(n for task, n in expected.items.items() if default_registry()[task].runs is not Runs.POOL)
    assert batched_items < sum(expected.items.values())  # the traffic has math items
    assert value(after, "reward_batch_items_sum") == batched_items
    assert 1 <= value(after, "reward_batch_items_count") <= scored_requests
    assert value(after, "reward_tokens_total", side="response") > 0
    assert value(after, "reward_batch_stage_seconds_total", stage="kernel") > 0
    assert value(after, "reward_errors_total", reason="invalid_item") == 1
    assert value(after, "reward_errors_total", reason="invalid_request") == 1
    assert value(after, "reward_requests_total", endpoint="/score", outcome="success") == scored_requests
    assert value(after, "reward_requests_total", endpoint="/score", outcome="client_error") == 2
    assert value(after, "reward_request_duration_seconds_count", endpoint="/score") == scored_requests + 2
    assert value(after, "reward_in_flight_requests") == 0
    assert value(after, "reward_queue_depth_items") == 0
    assert value(after, "reward_ready") == 1


def test_table_and_build_info(traffic: Any) -> None:
    server, _, _, after = traffic
    info = httpx.get(f"{server.url}/v1/info").json()
    (table,) = [dict(key) for name, key in after if name == "reward_table_info"]
    assert table["content_hash"] == info["content_hash"]
    assert table["vocab_size"] == str(info["vocab_size"]) and table["device"] == info["device"]
    (build,) = [dict(key) for name, key in after if name == "reward_build_info"]
    assert build["version"] == info["version"]


def test_table_info_is_read_at_scrape_time(default_table: Any) -> None:
    """A reload swaps a table, a load or an eviction changes the set: every scrape names what is in
    memory now, one series per table."""
    from reward_server.engine.batcher import single_table
    from reward_server.engine.scorer import RewardEngine

    tables = single_table(RewardEngine(default_table))
    state = SimpleNamespace(tables=tables)
    collector = TableInfoCollector(state)
    (sample,) = [s for f in collector.collect() for s in f.samples]
    assert (sample.labels["name"], sample.labels["content_hash"]) == ("default", default_table.info()["content_hash"])
    tables.entries["default"].engine = None  # evicted
    assert [s for f in collector.collect() for s in f.samples] == []


def test_endpoint_and_reason_labels_stay_bounded(default_table: Any) -> None:
    with running_server(default_table, max_body_bytes=2048, api_token="secret") as server:
        with httpx.Client(base_url=server.url) as client:
            for i in range(20):
                assert client.get(f"/scanner/probe-{i}").status_code == 404
            assert client.post("/score", json={"items": []}).status_code == 401
            too_large = client.post("/score", content=b"x" * 4096, headers={"authorization": "Bearer secret"})
            assert too_large.status_code == 413 and too_large.json()["error"]["type"] == "body_too_large"
            assert client.get("/healthz").status_code == 200
        after = scrape(server.url)
    endpoints = label_values(after, "reward_requests_total", "endpoint")
    # every route of the app (created at zero) and "other": nothing minted by the probes
    assert endpoints == {*route_paths(server.app), "other"} and "/slime" in endpoints
    assert value(after, "reward_requests_total", endpoint="other", outcome="client_error") == 20
    assert value(after, "reward_errors_total", reason="not_found") == 20
    assert value(after, "reward_errors_total", reason="unauthorized") == 1
    assert value(after, "reward_errors_total", reason="body_too_large") == 1
    assert value(after, "reward_requests_total", endpoint="/healthz", outcome="success") == 1


def test_a_server_bug_is_a_500_counted_as_internal_error(default_table: Any) -> None:
    with running_server(default_table) as server:

        async def broken() -> None:
            raise RuntimeError("boom")

        server.app.add_api_route("/test-broken", broken)
        response = httpx.get(f"{server.url}/test-broken")
        assert response.status_code == 500
        after = scrape(server.url)
    assert value(after, "reward_errors_total", reason="internal_error") == 1
    assert value(after, "reward_requests_total", endpoint="/test-broken", outcome="server_error") == 1
    assert value(after, "reward_in_flight_requests") == 0


class _Batcher:
    def __init__(self, error: Exception) -> None:
        self.error = error

    async def submit(self, items: Any, **_: Any) -> Any:
        raise self.error


def test_items_never_scored_are_counted_by_why(default_table: Any) -> None:

    from reward_server.rewards.rules import prepare_ground_truth
    from reward_server.rewards.scoring import PreparedItem

    metrics = ServiceMetrics(default_registry().families())
    items = [
        PreparedItem("yes", prepare_ground_truth("yes_no", "yes")),
        PreparedItem("A", prepare_ground_truth("mcq", "A")),
        PreparedItem("B", prepare_ground_truth("mcq", "A")),
    ]
    with pytest.raises(QueueFull):
        asyncio.run(metrics.submit(_Batcher(QueueFull("full")), items))  # type: ignore[arg-type]
    with pytest.raises(RuntimeError):
        asyncio.run(metrics.submit(_Batcher(RuntimeError("bug")), items[:1]))  # type: ignore[arg-type]
    samples = parse(metrics.render().decode())
    assert value(samples, "reward_items_total", task_type="mcq", outcome="rejected", profile="mixed-r1", job="default") == 2
    assert value(samples, "reward_items_total", task_type="yes_no", outcome="rejected", profile="mixed-r1", job="default") == 1
    assert value(samples, "reward_items_total", task_type="yes_no", outcome="failed", profile="mixed-r1", job="default") == 1
    assert value(samples, "reward_items_total", task_type="mcq", outcome="scored", profile="mixed-r1", job="default") == 0


def test_group_task_types_come_from_their_members() -> None:

    from reward_server.rewards.rules import prepare_ground_truth
    from reward_server.rewards.scoring import PreparedItem

    metrics = ServiceMetrics(default_registry().families())
    truth = {"chart": prepare_ground_truth("chart", "3"),
             "yes_no": prepare_ground_truth("yes_no", "no")}
    tasks = ["chart", "chart", "yes_no", "yes_no", "chart", "yes_no",
             "yes_no"]
    group_ids = ["g1", "g1", "g2", "g2", "g3", "g3", "alone"]  # "alone": a one-item group, not counted
    rewards = [1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0]
    items = [PreparedItem("x", truth[task]) for task in tasks]
    metrics.observe_groups(summarise_groups(group_ids, rewards), group_ids, items)
    samples = parse(metrics.render().decode())
    counts: dict[str, float] = defaultdict(float)
    for task in ("chart", "yes_no", "mixed"):
        counts[task] = value(samples, "reward_groups_total", task_type=task)
    assert counts == {"chart": 1, "yes_no": 1, "mixed": 1}
    assert value(samples, "reward_zero_variance_groups_total", task_type="chart") == 1
    assert value(samples, "reward_zero_variance_groups_total", task_type="mixed") == 0
    assert value(samples, "reward_zero_variance_groups_total", task_type="yes_no") == 0


def test_several_apps_in_one_process_keep_separate_metrics(default_table: Any, server: Any) -> None:
    shared_before = value(scrape(server.url), "reward_items_total", task_type="yes_no", outcome="scored", profile="mixed-r1", job="default")
    with running_server(default_table) as other:
        item = {"response": "yes", "ground_truth": "yes", "task_type": "yes_no"}
        httpx.post(f"{other.url}/score", json={"items": [item]}).raise_for_status()
        mine = scrape(other.url)
    assert value(mine, "reward_items_total", task_type="yes_no", outcome="scored", profile="mixed-r1", job="default") == 1
    shared_after = value(scrape(server.url), "reward_items_total", task_type="yes_no", outcome="scored", profile="mixed-r1", job="default")
    assert shared_after == shared_before


def test_openrlhf_requests_are_counted_like_score(default_table: Any) -> None:
    """/get_reward goes through the same scoring path: its items and rewards land in the same series."""
    prompt = "Is there a cat? Answer yes or no.\n"
    body = {
        "query": [prompt + "<think>looking</think><answer>yes</answer>", prompt + "no"],
        "prompts": [prompt, prompt],
        "labels": [json.dumps({"ground_truth": "yes", "task_type": "yes_no"})] * 2,
    }
    with running_server(default_table) as server:
        response = httpx.post(f"{server.url}/get_reward", json=body)
        assert response.status_code == 200, response.text
        rewards = response.json()["rewards"]
        after = scrape(server.url)
    assert value(after, "reward_requests_total", endpoint="/get_reward", outcome="success") == 1
    assert value(after, "reward_items_total", task_type="yes_no", outcome="scored", profile="mixed-r1", job="default") == 2
    total = value(after, "reward_value_sum", task_type="yes_no", component="reward", profile="mixed-r1")
    assert close(total, math.fsum(rewards))
    assert value(after, "reward_queue_wait_seconds_count", job="default") == 1
