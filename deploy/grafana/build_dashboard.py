"""Generate ``dashboards/mixed-reward.json``, the Grafana dashboard of the reward service.

The dashboard is written as code so that its 40-odd PromQL expressions stay consistent (same
windows, same label filters) and reviewable; the JSON is committed for Grafana's file provisioning
and a test checks it equals this script's output.  Run after editing:

    python deploy/grafana/build_dashboard.py

Design rules, so that any Prometheus scraping the service can evaluate every query as written:
no template variables, no Grafana macros (``$__rate_interval``), no job or instance selectors.
Several replicas are summed. "Since start" panels use the raw counters (exact counts); the others
use ``rate()`` over a trailing window: 1m for traffic and latency, 5m for rewards and groups,
which arrive in bursts once per training step.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from reward_server.rewards.registry import default_registry

DATASOURCE = {"type": "prometheus", "uid": "reward-prometheus"}
OUTPUT = Path(__file__).parent / "dashboards" / "mixed-reward.json"
FAMILIES = default_registry().families()  # the built-in reward families: their names and sub-scores
FAST = "1m"  # traffic, latency, batches
SLOW = "5m"  # rewards and groups
SCORING = 'endpoint=~"/score|/get_reward"'
NOT_METRICS = 'endpoint!="/metrics"'


class Layout:
    """Places panels left to right on Grafana's 24-column grid, wrapping to a new line."""

    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.x = self.y = self.line_height = 0

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append(
            {"type": "row", "title": title, "collapsed": False, "gridPos": {"x": 0, "y": self.y, "w": 24, "h": 1},
             "id": len(self.panels) + 1, "panels": []}
        )
        self.y += 1

    def add(self, panel: dict[str, Any], w: int, h: int = 8) -> None:
        if self.x + w > 24:
            self._newline()
        panel["id"] = len(self.panels) + 1
        panel["gridPos"] = {"x": self.x, "y": self.y, "w": w, "h": h}
        self.panels.append(panel)
        self.x += w
        self.line_height = max(self.line_height, h)

    def _newline(self) -> None:
        self.y += self.line_height
        self.x = self.line_height = 0


def target(expr: str, legend: str = "", ref: str = "A", **extra: Any) -> dict[str, Any]:
    return {"refId": ref, "datasource": DATASOURCE, "expr": expr, "legendFormat": legend, **extra}


def timeseries(title: str, description: str, targets: list[dict[str, Any]], unit: str = "short",
               **defaults: Any) -> dict[str, Any]:
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": targets,
        "fieldConfig": {"defaults": {"unit": unit, "custom": {"fillOpacity": 10, "showPoints": "never"},
                                     **defaults}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
    }


def stat(title: str, description: str, targets: list[dict[str, Any]], unit: str = "short",
         decimals: int | None = None) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": unit}
    if decimals is not None:
        defaults["decimals"] = decimals
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": [{**t, "instant": True, "range": False} for t in targets],
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "textMode": "value_and_name", "colorMode": "none", "graphMode": "none"},
    }


def table(title: str, description: str, expr: str, decimals: int | None = None) -> dict[str, Any]:
    defaults: dict[str, Any] = {}
    if decimals is not None:
        defaults["decimals"] = decimals
    return {
        "type": "table",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": [target(expr, format="table", instant=True, range=False)],
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"showHeader": True},
        "transformations": [{"id": "organize", "options": {"excludeByName": {"Time": True}}}],
    }


def heatmap(title: str, description: str, expr: str) -> dict[str, Any]:
    return {
        "type": "heatmap",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": [target(expr, "{{le}}", format="heatmap")],
        "fieldConfig": {"defaults": {"custom": {"scaleDistribution": {"type": "linear"}}}, "overrides": []},
        "options": {
            "calculate": False,
            "yAxis": {"axisPlacement": "left", "unit": "none"},
            "rowsFrame": {"layout": "le"},
            "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64, "exponent": 0.5, "fill": "dark-orange"},
            "cellGap": 1,
            "tooltip": {"mode": "single", "yHistogram": True},
            "legend": {"show": True},
        },
    }


def mean(selector: str, by: str, window: str = SLOW) -> str:
    """Mean of a histogram's observations over the window: rate(sum) / rate(count)."""
    return (f"sum by ({by}) (rate(reward_value_sum{{{selector}}}[{window}]))"
            f" / sum by ({by}) (rate(reward_value_count{{{selector}}}[{window}]))")


def quantiles(metric: str, selector: str = "", window: str = FAST) -> list[dict[str, Any]]:
    matchers = f"{{{selector}}}" if selector else ""
    return [
        target(f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket{matchers}[{window}])))",
               f"p{round(q * 100)}", ref)
        for q, ref in ((0.5, "A"), (0.95, "B"), (0.99, "C"))
    ]


def build() -> dict[str, Any]:
    g = Layout()

    g.row("Traffic and errors")
    g.add(timeseries(
        "Requests per second by endpoint",
        "HTTP requests answered per second, per route (scrapes of /metrics left out).",
        [target(f"sum by (endpoint) (rate(reward_requests_total{{{NOT_METRICS}}}[{FAST}]))", "{{endpoint}}")],
        "reqps"), 8)
    g.add(timeseries(
        "Items scored per second by task type",
        "Items that got a reward, per second and task type: what the trainer is sending.",
        [target(f'sum by (task_type) (rate(reward_items_total{{outcome="scored"}}[{FAST}]))', "{{task_type}}")],
        "short"), 8)
    g.add(timeseries(
        "Errors per second by reason",
        "Error responses per second by the error.type of the JSON body (invalid_request, overloaded, ...).",
        [target(f"sum by (reason) (rate(reward_errors_total[{FAST}]))", "{{reason}}")],
        "reqps"), 8)
    g.add(stat(
        "Items scored since start",
        "Items scored per task type since the service (each replica) started: exact counts.",
        [target('sum by (task_type) (reward_items_total{outcome="scored"})', "{{task_type}}")],
        "short", 0), 8, 6)
    g.add(timeseries(
        "Items not scored per second",
        "Items refused because the queue was full or the service was stopping (rejected), "
        "or lost to a server bug (failed). Anything here means lost rollouts.",
        [target(f'sum by (task_type, outcome) (rate(reward_items_total{{outcome!="scored"}}[{FAST}]))',
                "{{task_type}} {{outcome}}")],
        "short"), 8, 6)
    g.add(timeseries(
        "Error ratio",
        "Share of requests answered with a 4xx or 5xx (client mistakes and overload), and with a 5xx "
        "(server bugs: should stay at 0).",
        [target(f'sum(rate(reward_requests_total{{outcome!="success",{NOT_METRICS}}}[{FAST}]))'
                f" / sum(rate(reward_requests_total{{{NOT_METRICS}}}[{FAST}]))", "non-2xx", "A"),
         target(f'sum(rate(reward_requests_total{{outcome="server_error",{NOT_METRICS}}}[{FAST}]))'
                f" / sum(rate(reward_requests_total{{{NOT_METRICS}}}[{FAST}]))", "5xx", "B")],
        "percentunit"), 8, 6)

    g.row("Latency and queue")
    g.add(timeseries(
        "Scoring latency p50 / p95 / p99",
        "Time from the first byte of a /score or /get_reward request to the last byte of its answer.",
        quantiles("reward_request_duration_seconds", SCORING), "s"), 8)
    g.add(timeseries(
        "Queue wait p50 / p95 / p99",
        "Time a scoring request waited for its device batch to start (coalescing wait plus the "
        "batches ahead of it). Growing while latency grows: the device is the bottleneck.",
        quantiles("reward_queue_wait_seconds"), "s"), 8)
    g.add(timeseries(
        "Device batch duration p50 / p95 / p99",
        "Wall time of one engine call (rules, tokenizing, BMAS kernel) for one coalesced batch.",
        quantiles("reward_batch_duration_seconds"), "s"), 8)
    g.add(timeseries(
        "In-flight requests and queue depth",
        "Requests being handled now, and items waiting in the batcher's queue (requests get 429 past "
        "REWARD_QUEUE_MAX_ITEMS).",
        [target("sum(reward_in_flight_requests)", "in-flight requests", "A"),
         target("sum(reward_queue_depth_items)", "queued items", "B")],
        "short"), 12)
    g.add(timeseries(
        "Engine time by stage",
        "Seconds per second spent in each engine stage: rules, tokenize, kernel. Near 1 in total: "
        "the single scoring worker is saturated.",
        [target(f"sum by (stage) (rate(reward_batch_stage_seconds_total[{FAST}]))", "{{stage}}")],
        "s"), 12)

    g.row("Batches and tokens")
    g.add(timeseries(
        "Items per device batch",
        "How many items each device batch held: the mean and p95. Many one-item requests and a "
        "mean near 1 means requests are not being coalesced.",
        [target(f"sum(rate(reward_batch_items_sum[{FAST}])) / sum(rate(reward_batch_items_count[{FAST}]))",
                "mean", "A"),
         target(f"histogram_quantile(0.95, sum by (le) (rate(reward_batch_items_bucket[{FAST}])))", "p95", "B")],
        "short"), 6)
    g.add(timeseries(
        "BMAS tokens per batch",
        "Mean tokens embedded per device batch, responses and ground truths (open-ended items only).",
        [target(f"sum by (side) (rate(reward_batch_tokens_sum[{FAST}]))"
                f" / sum by (side) (rate(reward_batch_tokens_count[{FAST}]))", "{{side}}")],
        "short"), 6)
    g.add(timeseries(
        "Tokens scored per second",
        "BMAS throughput: tokens embedded and compared per second.",
        [target(f"sum by (side) (rate(reward_tokens_total[{FAST}]))", "{{side}}")],
        "short"), 6)
    g.add(timeseries(
        "Device batches per second",
        "Engine calls per second.",
        [target(f"sum(rate(reward_batch_items_count[{FAST}]))", "batches")],
        "short"), 6)

    g.row("Rewards")
    g.add(timeseries(
        "Mean reward by task type",
        "Mean final reward (accuracy + format_weight * format) per task type over 5 minutes. "
        "A sudden drop or a flat line is the first sign of a broken run.",
        [target(mean('component="reward"', "task_type"), "{{task_type}}")], "none"), 8)
    g.add(timeseries(
        "Mean accuracy by task type",
        "Mean accuracy component per task type over 5 minutes, on each family's own scale: the fraction "
        "correct for the binary ones, the mean IoU, tIoU or ANLS for the continuous ones, the mean BMAS for "
        "open_ended (GET /v1/info lists every family and its range).",
        [target(mean('component="accuracy"', "task_type"), "{{task_type}}")], "none"), 8)
    g.add(timeseries(
        "Format pass rate by task type",
        "Share of responses in the <think>...</think><answer>...</answer> format, per task type.",
        [target(mean('component="format"', "task_type"), "{{task_type}}")], "percentunit", min=0, max=1), 8)
    g.add(timeseries(
        "Sub-scores by task type",
        "Mean of each family's named sub-scores: for open_ended the two BMAS terms, forward (response tokens "
        "to their best ground-truth token) and backward (ground truth to response); forward high and "
        "backward low: short answers that miss content.",
        [target(mean('component!~"reward|accuracy|format"', "task_type, component"),
                "{{task_type}} {{component}}")], "none"), 8)
    g.add(timeseries(
        "Scorer timeouts (math)",
        "Items per second of a pooled family (math) whose verification overran --math-timeout-seconds and "
        "scored 0 (reward_item_timeouts_total). A steady rate: pathological answers, or too few --math-workers.",
        [target(f"sum by (task_type) (rate(reward_item_timeouts_total[{SLOW}]))", "{{task_type}}")], "ops"), 8)
    g.add(table(
        "Mean per task type and component since start",
        "Mean of every reward component per task type since the service started (sum / count).",
        "sum by (task_type, component) (reward_value_sum) / sum by (task_type, component) (reward_value_count)",
        4), 16)

    g.row("Reward distributions")
    for family in FAMILIES:
        task = family.name
        for component in ("reward", "accuracy", *family.sub_scores):
            g.add(heatmap(
                f"Distribution: {task} {component}",
                f"Histogram of the {component} of {task} items over time (items per second per bucket, "
                "5-minute window). A distribution collapsing onto one bucket means no learning signal.",
                f'sum by (le) (rate(reward_value_bucket{{task_type="{task}",component="{component}"}}[{SLOW}]))'),
                6, 7)

    g.row("GRPO groups")
    g.add(timeseries(
        "Zero-variance group fraction by task type",
        "Share of GRPO groups whose rewards are all equal (within REWARD_ZERO_VARIANCE_TOLERANCE): "
        "zero advantage, no learning signal. Rising: the prompts became too easy or too hard, or a "
        "reward is broken.",
        [target(f"sum by (task_type) (rate(reward_zero_variance_groups_total[{SLOW}]))"
                f" / sum by (task_type) (rate(reward_groups_total[{SLOW}]))", "{{task_type}}")],
        "percentunit", min=0, max=1), 8)
    g.add(stat(
        "Zero-variance fraction since start",
        "Share of all groups since start with zero variance.",
        [target("sum(reward_zero_variance_groups_total) / sum(reward_groups_total)", "all groups")],
        "percentunit", 1), 4)
    g.add(timeseries(
        "Groups per second by task type",
        "GRPO groups (distinct group_id per request) summarised per second.",
        [target(f"sum by (task_type) (rate(reward_groups_total[{SLOW}]))", "{{task_type}}")], "short"), 6)
    g.add(timeseries(
        "Median group reward std by task type",
        "Median within-group sample std of rewards: the size of GRPO's advantages before normalising.",
        [target(f"histogram_quantile(0.5, sum by (le, task_type) (rate(reward_group_std_bucket[{SLOW}])))",
                "{{task_type}}")], "none"), 6)
    g.add(heatmap(
        "Group std distribution",
        "Histogram of within-group reward std over time, all task types.",
        f"sum by (le) (rate(reward_group_std_bucket[{SLOW}]))"), 24, 7)

    g.row("Table and device")
    g.add(stat(
        "Ready replicas",
        "Replicas answering /readyz, and replicas being scraped at all.",
        [target("sum(reward_ready)", "ready", "A"), target("count(reward_build_info)", "scraped", "B")],
        "short", 0), 6, 5)
    g.add(stat(
        "Checkpoints per table name",
        "For the table name with the most: distinct checkpoint hashes across replicas. 1 normally, 2 during a "
        "rolling /admin/reload; more than 1 for long: replicas score one policy with different checkpoints.",
        [target("max(count by (name) (count by (name, content_hash) (reward_table_info)))", "hashes")],
        "short", 0), 6, 5)
    g.add(table(
        "Embedding table",
        "Which checkpoint's input-embedding table each replica holds in memory, per table name: source, "
        "tensor, hash, shape, device, dtype.",
        "reward_table_info"), 12, 5)
    g.add(table(
        "Build",
        "Service, Python, torch and CUDA versions per replica.",
        "reward_build_info"), 24, 5)

    return {
        "uid": "mixed-reward",
        "title": "Mixed reward service",
        "description": "Traffic, latency, batching and reward distributions of the Mixed-R1 reward service.",
        "tags": ["reward", "grpo", "mixed-r1"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "schemaVersion": 39,
        "version": 1,
        "templating": {"list": []},
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
            "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard",
        }]},
        "panels": g.panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


if __name__ == "__main__":
    OUTPUT.write_text(render())
    print(f"wrote {OUTPUT}")
