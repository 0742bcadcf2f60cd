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
