import os
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever downloaded, in tests least of all
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The loader remembers where a layout's embedding lives; tests keep that out of ~/.cache.
# Subprocesses inherit it, so a server started by a test reuses what this process learned.
os.environ.setdefault("REWARD_SERVER_CACHE_DIR", tempfile.mkdtemp(prefix="reward-server-cache-"))
sys.path.insert(0, str(Path(__file__).parent))  # tests import helper modules (serving, checkpoints)


@pytest.fixture(scope="session")
def default_table():
    from reward_server.embeddings.loader import load_table

    return load_table(None, device="cpu")


@pytest.fixture(scope="session")
def server(default_table):
    """One real server on the embedded default for the whole session."""
    from serving import running_server

    with running_server(default_table) as srv:
        yield srv


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """The compose test runs last, while its engine and images are prepared in the background from
    now on (tests/docker_harness.py): a fresh machine's minutes of apt and debootstrap overlap the
    rest of the suite instead of adding to it."""
    docker = [item for item in items if item.get_closest_marker("docker")]
    if not docker or config.option.collectonly:
        return
    items[:] = [item for item in items if not item.get_closest_marker("docker")] + docker
    from docker_harness import prepare_in_background

    prepare_in_background()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if "docker_harness" in sys.modules:
        sys.modules["docker_harness"].finish_background_preparation()
