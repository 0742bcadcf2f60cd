"""A real Prometheus for tests, and the mixed traffic whose metrics the tests check.

Prometheus comes from the Debian ``prometheus`` package. It is installed by the test set-up when
missing (CI runs as root); a failed install fails the test instead of skipping it, so a green CI
really evaluated the dashboard. Only a non-root run outside CI skips, saying why.
"""

from __future__ import annotations

import json
import math
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from debian_packages import ensure_binaries

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
SCRAPE_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "mixed-reward.json"


# --- installing and running Prometheus ------------------------------------------------------


def ensure_prometheus() -> tuple[str, str]:
    """Paths of ``prometheus`` and ``promtool``, installing the Debian package if they are missing."""
    prometheus, promtool = ensure_binaries("prometheus", "prometheus", "promtool")
    return prometheus, promtool


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scrape_config_for(target: str, directory: Path, interval: str = "1s", http_sd: str | None = None) -> Path:
    """The deploy scrape config, pointed at ``target`` and scraping every ``interval``; the alert
    rules beside it are copied too, so the test evaluates the same rules as production. With
    ``http_sd`` (a URL), the targets come from HTTP service discovery instead (Ray Serve replicas)."""
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    config["global"]["scrape_interval"] = interval
    config["global"]["evaluation_interval"] = interval
    for job in config["scrape_configs"]:
        job["scrape_interval"] = interval
        job["scrape_timeout"] = interval
        for static in job.get("static_configs", []):
            static["targets"] = [target]
        if http_sd is not None:
            del job["static_configs"]
            job["http_sd_configs"] = [{"url": http_sd, "refresh_interval": interval}]
    for rules in config.get("rule_files", []):
        shutil.copy(SCRAPE_CONFIG.parent / rules, directory / rules)
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class PrometheusError(AssertionError):
    pass


@dataclass
class Prometheus:
    url: str
    client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=10))

    def api(self, path: str, **params: str) -> Any:
        response = self.client.get(f"{self.url}/api/v1/{path}", params=params)
        body = response.json()
        if response.status_code != 200 or body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {response.status_code} {body.get('error', body)}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query at now; the vector's samples (``{"metric": {...}, "value": [t, "v"]}``)."""
        data = self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def values(self, expr: str, *labels: str) -> dict[tuple[str, ...], float]:
        """Instant query, as {label values: float value}."""
        return {
            tuple(sample["metric"].get(label, "") for label in labels): float(sample["value"][1])
            for sample in self.query(expr)
        }

    def wait_for(self, expr: str, ready: Callable[[list[dict[str, Any]]], bool], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = self.query(expr)
                if ready(last):
                    return
            except (httpx.HTTPError, PrometheusError) as exc:
                last = exc
            time.sleep(0.2)
        raise TimeoutError(f"Prometheus never satisfied {expr!r}; last answer: {last!r}")


@contextmanager
def running_prometheus(target: str, http_sd: str | None = None) -> Iterator[Prometheus]:
    """A real Prometheus on 127.0.0.1, scraping ``target`` (or what ``http_sd`` lists) every second,
    with throwaway storage."""
    binary, _ = ensure_prometheus()
    with tempfile.TemporaryDirectory(prefix="reward-prometheus-") as tmp:
        directory = Path(tmp)
        config = scrape_config_for(target, directory, http_sd=http_sd)
        for _attempt in range(3):  # the free port may be taken between choosing and binding it
            port = _free_port()
            log = (directory / "prometheus.log").open("w")
            process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={directory / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            prometheus = Prometheus(f"http://127.0.0.1:{port}")
            try:
                if _wait_ready(prometheus, process):
                    break
            except BaseException:
                _stop(process)
                raise
            _stop(process)
        else:
            raise RuntimeError(f"prometheus did not start:\n{(directory / 'prometheus.log').read_text()[-3000:]}")
        try:
            yield prometheus
        finally:
            prometheus.client.close()
            _stop(process)
            log.close()


def _wait_ready(prometheus: Prometheus, process: subprocess.Popen[bytes], timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            if prometheus.client.get(f"{prometheus.url}/-/ready").status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- the dashboard --------------------------------------------------------------------------


def dashboard_panels() -> list[dict[str, Any]]:
    """Every panel of the dashboard, rows' nested panels included."""
    panels = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query of the dashboard."""
    return [
        (panel["title"], target["expr"])
        for panel in dashboard_panels()
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def panel_expr(title: str, ref: str = "A") -> str:
    for panel in dashboard_panels():
        if panel["title"] == title:
            for target in panel["targets"]:
                if target["refId"] == ref:
                    return target["expr"]
    raise KeyError(f"no panel {title!r} with query {ref}")


# --- traffic ------------------------------------------------------------------------------


def _item(task: str, response: str, truth: Any, group: str | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {"response": response, "ground_truth": truth, "task_type": task}
    if group is not None:
        item["group_id"] = group
    return item


def fmt(answer: str) -> str:
    return f"<think>reasoning</think><answer>{answer}</answer>"


def mixed_batch() -> list[dict[str, Any]]:
    """Every task type (aliases included), groups with and without variance, and a mixed group."""
    return [
        _item("yes_no", fmt("yes"), "yes", "yn-1"),
        _item("yes_no", "Yes, it is.", "yes", "yn-1"),
        _item("yes_no", fmt("no"), "yes", "yn-1"),
        _item("yorn", "no idea", "yes", "yn-1"),
        _item("yes_no", fmt("no"), "no", "yn-2"),  # zero variance: all right, all formatted
        _item("yes_no", fmt("No."), "no", "yn-2"),
        _item("yes_no", fmt("no"), "no", "yn-2"),
        _item("mcq", fmt("A"), "A", "mcq-1"),
        _item("mcq", "The answer is (B).", "A", "mcq-1"),
        _item("multiple_choice", "(A) 3 cm", "A. 3 cm", "mcq-1"),
        _item("mcq", "C", "B", "mcq-2"),  # zero variance: all wrong
        _item("mcq", "D", "B", "mcq-2"),
        _item("chart", "12,000", "12000", "ch-1"),
        _item("chart", fmt("$12,050"), "12000", "ch-1"),
        _item("numeric", "11000", "12000", "ch-1"),
        _item("chart", fmt("45%"), "0.45"),
        _item("grounding", fmt("[0, 0, 10, 10]"), "[0, 0, 10, 10]", "gr-1"),
        _item("grounding", "[0, 0, 10, 5]", "[0, 0, 10, 10]", "gr-1"),
        _item("bbox", '[{"bbox_2d": [5, 5, 15, 15], "label": "cat"}]', "[0, 0, 10, 10]", "gr-1"),
        _item("grounding", "no box here", "[0, 0, 10, 10]", "gr-1"),
        _item("grounding", "[2, 2, 4, 4]", "[0, 0, 4, 4]"),
        _item("open_ended", "a cat on a mat", "a cat sitting on a mat", "oe-1"),
        _item("open_ended", fmt("a cat sitting on a mat"), "a cat sitting on a mat", "oe-1"),
        _item("caption", "a dog running in the park", "a cat sitting on a mat", "oe-1"),
        _item("open_ended", fmt("two people riding bikes"), "two people riding bikes", "oe-2"),
        _item("open_ended", fmt("two people riding bikes"), "two people riding bikes", "oe-2"),
        _item("open_ended", "a red car", "a blue truck"),
        _item("yes_no", fmt("yes"), "yes", "mix-1"),  # one group, two task types: "mixed"
        _item("mcq", fmt("B"), "B", "mix-1"),
        # SPEC §13's families (math goes through the worker pool)
        _item("math", fmt("\\boxed{5}"), "5", "ma-1"),
        _item("math", fmt("3 or 4"), "4", "ma-1"),
        _item("latex", "$\\frac{1}{2}$", "0.5", "ma-1"),
        _item("temporal_grounding", fmt("10 to 20"), {"segment": [10, 20], "duration": 60}, "tg-1"),
        _item("tiou", "15 to 25", "[10, 20]", "tg-1"),
        _item("tvg", fmt("no idea"), "[10, 20]", "tg-1"),
        _item("ocr", fmt("Paris"), "Paris", "oc-1"),
        _item("anls", "Pari", ["Paris", "Lyon"], "oc-1"),
        _item("ocr", fmt("London"), "Paris", "oc-1"),
        _item("counting", fmt("3"), "3", "co-1"),
        _item("count", "three dogs", 3, "co-1"),
        _item("counting", fmt("3 or 4"), "3", "co-1"),
        _item("point", fmt("(15, 25)"), [10, 20, 30, 40], "pt-1"),
        _item("click", "(50, 50)", [10, 20, 30, 40], "pt-1"),
    ]


def single_items(count: int = 12) -> list[dict[str, Any]]:
    """One-item requests, sent concurrently so the batcher coalesces them."""
    tasks = [
        _item("yes_no", "yes", "yes"),
        _item("mcq", fmt("B"), "B"),
        _item("chart", "7", "7.0"),
        _item("grounding", "[0,0,2,2]", "[0,0,2,2]"),
        _item("open_ended", "hello world", "hello there"),
    ]
    return [tasks[i % len(tasks)] for i in range(count)]


COMPONENTS = ("reward", "accuracy", "format", "bmas_forward", "bmas_backward", "tiou", "boundary_penalty")


@dataclass
class Expected:
    """What the metrics must say after the traffic, computed from the service's own responses."""

    items: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    values: dict[tuple[str, str], list[float]] = field(default_factory=lambda: defaultdict(list))
    groups: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    zero_variance: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    group_stds: list[float] = field(default_factory=list)
    requests: int = 0

    def add(self, request_items: list[dict[str, Any]], body: dict[str, Any]) -> None:
        self.requests += 1
        for result in body["results"]:
            task = result["task_type"]
            self.items[task] += 1
            for component in COMPONENTS:
                if result.get(component) is not None:
                    self.values[(task, component)].append(float(result[component]))
        task_of: dict[Any, str] = {}
        for item, result in zip(request_items, body["results"]):
            if item.get("group_id") is not None:
                previous = task_of.setdefault(item["group_id"], result["task_type"])
                if previous != result["task_type"]:
                    task_of[item["group_id"]] = "mixed"
        for group in body["groups"]:
            task = task_of[group["group_id"]]
            self.groups[task] += 1
            self.zero_variance[task] += int(group["zero_variance"])
            self.group_stds.append(group["std"])

    def mean(self, task: str, component: str) -> float:
        values = self.values[(task, component)]
        return math.fsum(values) / len(values)


def send_traffic(url: str) -> Expected:
    """The mixed batch, a burst of concurrent one-item requests, and two client errors."""
    expected = Expected()
    batch = mixed_batch()
    with httpx.Client(timeout=60) as client:
        response = client.post(f"{url}/score", json={"items": batch})
        response.raise_for_status()
        expected.add(batch, response.json())

        singles = single_items()
        bodies: list[dict[str, Any]] = [{} for _ in singles]

        def send(index: int) -> None:
            reply = client.post(f"{url}/score", json={"items": [singles[index]]})
            reply.raise_for_status()
            bodies[index] = reply.json()

        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(singles))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for item, body in zip(singles, bodies):
            expected.add([item], body)

        bad_type = client.post(f"{url}/score", json={"items": [_item("sentiment", "x", "y")]})
        assert bad_type.status_code == 422 and bad_type.json()["error"]["type"] == "invalid_item"
        malformed = client.post(f"{url}/score", json={"items": [{"response": "x"}]})
        assert malformed.status_code == 422 and malformed.json()["error"]["type"] == "invalid_request"
    return expected

