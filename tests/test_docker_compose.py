"""`docker compose up` for real: the CPU image is built from the Dockerfile (local base images, Python
packages from wheelhouse/, no network in the build), the reward service and Prometheus start from
docker-compose.yml with the CPU override, the service scores known items through its published
loopback port, Prometheus in its container scrapes it and has loaded the alert rules, and
`docker compose down` leaves nothing of the project behind.

Grafana is not started: no Grafana image can be built here (no registry, no Debian package). Its
provisioning is checked by tests/test_deploy_files.py (files, mounts, datasource URL and uid) and
its queries by tests/test_prometheus_dashboard.py against a real Prometheus.

Marked ``docker`` (deselect with ``-m "not docker"``); `make test` and CI run it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml
from docker_harness import CPU_IMAGE_TAG, ComposeProject, Engine, compose_up, engine_or_skip, stop_engine
from prometheus_harness import DEPLOY

pytestmark = pytest.mark.docker


def wrap(answer: str) -> str:
    return f"<think>reasoning</think><answer>{answer}</answer>"


# (item, reward) with the default settings: accuracy + 1.0 x format.
KNOWN = [
    ({"id": "yn", "response": wrap("yes"), "ground_truth": "yes", "task_type": "yes_no"}, 2.0),
    # [0,0,10,10] vs [5,0,15,10]: intersection 50, union 150.
    ({"id": "box", "response": wrap("[0, 0, 10, 10]"), "ground_truth": [5, 0, 15, 10], "task_type": "grounding"},
     1 / 3 + 1.0),
    # BMAS of a text with itself: forward 1 + backward 1, with the embedded default table.
    ({"id": "same", "response": wrap("A brown dog runs on the beach."),
      "ground_truth": "A brown dog runs on the beach.", "task_type": "open_ended"}, 3.0),
    ({"id": "mcq", "response": "The answer is (B).", "ground_truth": "A", "task_type": "mcq"}, 0.0),
]
# An open-ended pair with no round answer: the container's table must give what the host's gives.
DIFFERENT = {"id": "diff", "response": wrap("A dog on a red sofa."), "ground_truth": "A small dog sleeps on a red couch.",
             "task_type": "caption"}


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    engine = engine_or_skip()
    try:
        yield engine
    finally:
        stop_engine(engine)


@pytest.fixture(scope="module")
def project(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> ComposeProject:
    project = ComposeProject(engine, tmp_path_factory.mktemp("compose"))
    # The build compose runs, from the compose files' build section; only the base images and the
    # package source are local (docker_harness.Engine.build_args lists them for `docker build`).
    project.compose("build", "reward", timeout=1200)
    engine.keep_only_the_newest_build_cache()
    return project


def test_the_cpu_image_runs_unprivileged_with_a_health_check_and_no_wheels(project: ComposeProject) -> None:
    engine = project.engine
    config = yaml.safe_load(engine.run("image", "inspect", CPU_IMAGE_TAG, "--format", "{{json .Config}}").stdout)
    assert config["User"] == "10001"
    assert "http://127.0.0.1:8000/readyz" in " ".join(config["Healthcheck"]["Test"])
    assert config["Cmd"] == ["reward-server", "serve", "--host", "0.0.0.0", "--port", "8000"]
    probe = engine.run("run", "--rm", "--network", "none", "--entrypoint", "python3", CPU_IMAGE_TAG, "-c",
                       "import os, torch, reward_server; "
                       "print(os.getuid(), os.path.exists('/wheelhouse'), torch.__version__)")
    assert probe.stdout.split() == ["10001", "False", "2.13.0+cpu"]


def test_compose_up_scores_through_the_published_port_and_prometheus_scrapes_it(
    project: ComposeProject, server: Any,
) -> None:
    with compose_up(project, "reward", "prometheus"):
        reward_url = project.url("reward", 8000)
        assert httpx.get(f"{reward_url}/readyz", timeout=10).status_code == 200

        items = [item for item, _ in KNOWN] + [DIFFERENT]
        response = httpx.post(f"{reward_url}/score", json={"items": items}, timeout=60)
        assert response.status_code == 200, response.text
        results = {result["id"]: result for result in response.json()["results"]}
        for item, reward in KNOWN:
            assert results[item["id"]]["reward"] == pytest.approx(reward, abs=1e-5), item
        # The same package and table on the host (the suite's in-process server) give the same reward.
        host = httpx.post(f"{server.url}/score", json={"items": [DIFFERENT]}, timeout=60).json()["results"][0]
        assert 0 < results["diff"]["reward"] < 3
        assert results["diff"]["reward"] == pytest.approx(host["reward"], abs=1e-5)
        bad = httpx.post(f"{reward_url}/score", json={"items": [{"response": "x"}]}, timeout=60)
        assert bad.status_code == 422 and bad.json()["error"]["type"] == "invalid_request"

        # The container: unprivileged, the checkpoint volume read-only, healthy by its own check.
        (container,) = project.compose("ps", "-q", "reward").stdout.split()
        state = yaml.safe_load(project.engine.run("inspect", container, "--format", "{{json .}}").stdout)
        assert state["Config"]["User"] == "10001"
        assert state["State"]["Health"]["Status"] == "healthy"
        (models,) = [mount for mount in state["Mounts"] if mount["Destination"] == "/models"]
        assert models["RW"] is False
        write = project.compose("exec", "-T", "reward", "touch", "/models/x", check=False)
        assert write.returncode != 0 and "Read-only file system" in write.stderr

        prometheus = httpx.Client(base_url=project.url("prometheus", 9090), timeout=10)
        targets = wait_for(lambda: [
            target for target in api(prometheus, "targets")["activeTargets"]
            if target["labels"]["job"] == "reward" and target["health"] == "up"
        ])
        assert targets[0]["scrapeUrl"] == "http://reward:8000/metrics"
        alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
        groups = api(prometheus, "rules")["groups"]
        assert {group["name"]: [rule["name"] for rule in group["rules"]] for group in groups} == {
            group["name"]: [rule["alert"] for rule in group["rules"]] for group in alerts["groups"]
        }
        assert all(rule["health"] != "err" for group in groups for rule in group["rules"])
        # What the service counted reached Prometheus: the five items scored above.
        scored = wait_for(lambda: [
            sample for sample in api(prometheus, "query", query='sum(reward_items_total{outcome="scored"})')["result"]
            if float(sample["value"][1]) >= len(items)
        ])
        assert float(scored[0]["value"][1]) == len(items)
        prometheus.close()

    assert project.leftovers() == {"containers": [], "networks": [], "volumes": []}


def api(client: httpx.Client, path: str, **params: str) -> Any:
    response = client.get(f"/api/v1/{path}", params=params)
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", body
    return body["data"]


def wait_for(found: Any, timeout: float = 60) -> list[Any]:
    """Polls until ``found()`` returns a non-empty list (scrapes run every 5 s)."""
    deadline = time.monotonic() + timeout
    while True:
        result = found()
        if result or time.monotonic() > deadline:
            assert result, "timed out waiting for Prometheus"
            return result
        time.sleep(0.5)

