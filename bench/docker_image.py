"""The CPU image: its size, and its start-up time to ready against the same server started on the host.

    python bench/docker_image.py               # 3 starts each
    python bench/docker_image.py --starts 5

Uses the project's own engine (scripts/docker-env.sh up: local base images, wheelhouse/), builds
the CPU image as the compose test does (the legacy builder, no network in the build), then
alternates: `docker run` of the image with its port published on 127.0.0.1, and `reward-server
serve` on the host, each timed from the start command to the first 200 from /readyz (the table is
loaded and the scoring worker runs). Prints the image size, the time of the image build (cached
layers count as they are), each start and the median ratio container / host. Stops every container
it started, and dockerd if it started it.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx
from docker_harness import CPU_IMAGE_TAG, Engine, start_engine, stop_engine


def wait_ready(url: str, timeout: float = 300) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return time.monotonic()
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} not ready within {timeout} s")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


NETWORK = "mixed-reward-bench"


def container_start(engine: Engine) -> float:
    """The engine has no default bridge (scripts/docker-env.sh), so the container joins a network
    of the bench's own, as compose's containers join the project's."""
    port = free_port()
    start = time.monotonic()
    container = engine.run("run", "-d", "--rm", "--network", NETWORK, "-p", f"127.0.0.1:{port}:8000",
                           CPU_IMAGE_TAG).stdout.strip()
    try:
        return wait_ready(f"http://127.0.0.1:{port}") - start
    finally:
        engine.run("stop", "-t", "10", container, check=False)


def host_start() -> float:
    port = free_port()
    start = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "reward_server", "serve", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        return wait_ready(f"http://127.0.0.1:{port}") - start
    finally:
        process.terminate()
        process.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--starts", type=int, default=3)
    args = parser.parse_args()
    engine = start_engine()
    try:
        start = time.monotonic()
        engine.run("build", "-q", "-t", CPU_IMAGE_TAG, "--build-arg", "VARIANT=cpu", *engine.build_args(), ".",
                   timeout=1800)
        build = time.monotonic() - start
        engine.keep_only_the_newest_build_cache()
        size = int(engine.run("image", "inspect", CPU_IMAGE_TAG, "--format", "{{.Size}}").stdout)
        container, host = [], []
        engine.run("network", "create", NETWORK, check=False)
        try:
            for _ in range(args.starts):
                container.append(container_start(engine))
                host.append(host_start())
        finally:
            engine.run("network", "rm", NETWORK, check=False)
        print(f"image {CPU_IMAGE_TAG}: {size / 1e9:.2f} GB ({size / 2**30:.2f} GiB); build {build:.0f} s")
        print("start to ready (s)   " + "  ".join(f"{value:6.2f}" for value in container) + "   container")
        print("                     " + "  ".join(f"{value:6.2f}" for value in host) + "   host (reward-server serve)")
        median_container, median_host = statistics.median(container), statistics.median(host)
        print(f"median: container {median_container:.2f} s, host {median_host:.2f} s, "
              f"ratio {median_container / median_host:.2f}x")
    finally:
        stop_engine(engine)


if __name__ == "__main__":
    main()
