"""The project's own Docker engine and compose project, for tests/test_docker_compose.py and
bench/docker_image.py.

scripts/docker-env.sh installs Debian's docker.io and Compose v2, starts a dockerd of its own (its
own data root, socket and pidfile: no other engine is touched), builds the local base images and
fills wheelhouse/. Its exit status 3 means the engine cannot be installed here (not root, apt
failed): outside CI that skips, on CI it fails, so a green CI really ran ``docker compose up``.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "docker-env.sh"
COMPOSE_FILES = (REPO / "docker-compose.yml", REPO / "deploy" / "docker-compose.cpu.yml")
CPU_IMAGE_TAG = "mixed-reward:cpu"
BUILD_STAGE_LABEL = "org.mixed-reward.stage=build"
BUILD_CACHE_TAG = "mixed-reward-local/build-cache:cpu"

# Published on loopback only, on ports the engine picks (`docker compose port` tells which): the
# tests never take 8000/9090 from anyone, and nothing listens beyond 127.0.0.1.
# REWARD_DRAIN_SECONDS=0: no load balancer routes by readiness here, so `down` need not wait.
TEST_OVERRIDE = """\
services:
  reward:
    ports: !override ["127.0.0.1::8000"]
    environment:
      REWARD_DRAIN_SECONDS: "0"
  prometheus:
    ports: !override ["127.0.0.1::9090"]
"""


class EngineUnavailable(Exception):
    """The engine cannot be installed on this machine (the script's exit status 3)."""


@dataclass
class Engine:
    """A running dockerd of the project's, and whether this process started it."""

    env: dict[str, str]
    started: bool

    @property
    def docker(self) -> str:
        return self.env["DOCKER"]

    def run(self, *args: str, timeout: float = 600, check: bool = True, **env: str) -> subprocess.CompletedProcess:
        done = subprocess.run([self.docker, *args], capture_output=True, text=True, timeout=timeout, check=False,
                              cwd=REPO, env={**os.environ, **self.env, **env})
        if check and done.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} exited {done.returncode}:\n{done.stdout[-4000:]}"
                                 f"\n{done.stderr[-4000:]}")
        return done

    def keep_only_the_newest_build_cache(self) -> None:
        """The legacy builder leaves the build stage's image untagged ("dangling"), and it is the
        cache of the next build (torch and the dependencies installed). Tag the newest one, then
        prune every other untagged image, so the data root holds one generation, not one a run."""
        stages = self.run("images", "-q", "--filter", "dangling=true", "--filter",
                          f"label={BUILD_STAGE_LABEL}").stdout.split()
        if stages:
            self.run("tag", stages[0], BUILD_CACHE_TAG)  # `docker images` lists the newest first
        self.run("image", "prune", "-f")

    def build_args(self) -> list[str]:
        """The CPU image from the local base, its Python packages from wheelhouse/ alone."""
        names = ("CPU_IMAGE", "CUDA_IMAGE", "PIP_NO_INDEX", "PIP_FIND_LINKS")
        return [arg for name in names for arg in ("--build-arg", f"{name}={self.env[name]}")]


class _Preparation:
    """``scripts/docker-env.sh up`` running in the background from the start of the test session.

    On a fresh machine it takes minutes (apt, debootstrap, the wheelhouse download), mostly waiting
    on the package mirrors rather than the CPU, so tests/conftest.py starts it as soon as the compose
    test is collected and sorts that test last: the suite overlaps the wait instead of adding it.
    Output goes to files, not pipes, so a chatty apt can never block on a full pipe.
    """

    def __init__(self) -> None:
        # Open for the life of the background process, closed in result().
        self.out = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115
        self.err = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115
        self.proc = subprocess.Popen(["bash", str(SCRIPT), "up"], stdout=self.out, stderr=self.err, text=True)

    def result(self, timeout: float) -> tuple[int, str, str]:
        try:
            returncode = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        with self.out, self.err:
            self.out.seek(0)
            self.err.seek(0)
            return returncode, self.out.read(), self.err.read()


_preparation: _Preparation | None = None


def prepare_in_background() -> None:
    """Start ``docker-env.sh up`` now; :func:`start_engine` collects it (called by tests/conftest.py)."""
    global _preparation
    if _preparation is None:
        _preparation = _Preparation()


def finish_background_preparation() -> None:
    """At the end of the session: wait for a preparation no test collected (a run stopped early, -x)
    and stop the dockerd it started, so no engine is left running."""
    global _preparation
    if _preparation is None:
        return
    preparation, _preparation = _preparation, None
    returncode, stdout, _ = preparation.result(timeout=1500)
    if returncode == 0:
        stop_engine(_engine(stdout))


def start_engine(timeout: float = 1500) -> Engine:
    global _preparation
    if _preparation is not None:
        preparation, _preparation = _preparation, None
        returncode, stdout, stderr = preparation.result(timeout=timeout)
    else:
        done = subprocess.run(["bash", str(SCRIPT), "up"], capture_output=True, text=True, timeout=timeout,
                              check=False)
        returncode, stdout, stderr = done.returncode, done.stdout, done.stderr
    if returncode == 3:
        raise EngineUnavailable(stderr.strip().splitlines()[-1])
    if returncode != 0:
        raise RuntimeError(f"scripts/docker-env.sh up exited {returncode}:\n{stderr[-4000:]}")
    return _engine(stdout)


def _engine(stdout: str) -> Engine:
    """The engine that ``docker-env.sh up`` printed as ``KEY=value`` lines."""
    env = dict(line.split("=", 1) for line in stdout.splitlines() if "=" in line)
    return Engine(env={k: v for k, v in env.items() if k != "ENGINE"}, started=env["ENGINE"] == "started")


def stop_engine(engine: Engine) -> None:
    """Stops dockerd only if this process started it (by its pid, in the script)."""
    if engine.started:
        subprocess.run(["bash", str(SCRIPT), "stop"], capture_output=True, text=True, timeout=120, check=True)


def engine_or_skip() -> Engine:
    try:
        return start_engine()
    except EngineUnavailable as unavailable:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI must run the compose test: {unavailable}")
        pytest.skip(f"no Docker engine here: {unavailable}")


@dataclass
class ComposeProject:
    """One `docker compose` project of the test's own (unique name), on the CPU override."""

    engine: Engine
    directory: Path
    name: str = field(default_factory=lambda: f"mixed-reward-test-{uuid.uuid4().hex[:8]}")

    def __post_init__(self) -> None:
        (self.directory / "models").mkdir(exist_ok=True)
        self.override = self.directory / "compose.test.yml"
        self.override.write_text(TEST_OVERRIDE)

    def compose(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        files = [arg for path in (*COMPOSE_FILES, self.override) for arg in ("-f", str(path))]
        return self.engine.run("compose", "-p", self.name, *files, *args, timeout=timeout, check=check,
                               MODEL_DIR=str(self.directory / "models"))

    def url(self, service: str, port: int) -> str:
        published = self.compose("port", service, str(port)).stdout.strip()
        host, _, number = published.rpartition(":")
        assert host == "127.0.0.1", published
        return f"http://127.0.0.1:{number}"

    def leftovers(self) -> dict[str, list[str]]:
        """Containers, networks and volumes still labelled with this project."""
        label = f"label=com.docker.compose.project={self.name}"
        return {
            kind: self.engine.run(*command, "--filter", label).stdout.split()
            for kind, command in {
                "containers": ("ps", "-aq"), "networks": ("network", "ls", "-q"), "volumes": ("volume", "ls", "-q"),
            }.items()
        }


@contextmanager
def compose_up(project: ComposeProject, *services: str, wait_timeout: int = 240) -> Iterator[float]:
    """`up -d --wait` of the services (healthy, or running where there is no health check); yields
    the seconds that took. Always `down -v` afterwards, failed or not."""
    try:
        start = time.monotonic()
        done = project.compose("up", "-d", "--no-build", "--wait", "--wait-timeout", str(wait_timeout), *services,
                               timeout=wait_timeout + 60, check=False)
        elapsed = time.monotonic() - start
        if done.returncode != 0:
            logs = project.compose("logs", "--no-color", "--tail", "60", check=False)
            raise AssertionError(f"compose up exited {done.returncode}:\n{done.stderr[-3000:]}\n"
                                 f"compose logs:\n{logs.stdout[-6000:]}")
        yield elapsed
    finally:
        project.compose("down", "-v", "--remove-orphans", "--timeout", "45", check=False, timeout=180)
