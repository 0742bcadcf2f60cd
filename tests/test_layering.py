"""The data engine (offline commands) and the shared item layer never import the HTTP service.

Checked in a fresh interpreter, since this test process has long since imported FastAPI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PROBE = """
import json, sys
import {module}
print(json.dumps(sorted(m for m in sys.modules
                        if m.split('.')[0] in ('fastapi', 'starlette', 'uvicorn') or m.startswith('reward_server.service'))))
"""


@pytest.mark.parametrize(
    "module",
    [
        "reward_server.items.validation",
        "reward_server.offline.cli",
        "reward_server.offline.score, reward_server.offline.filter, reward_server.offline.report",
        "reward_server.offline.backends",
        "reward_server.cli",  # the `reward-server score|filter|report` entry point
    ],
)
def test_offline_and_items_import_no_http(module: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(module=module)], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out) == []


def test_probe_sees_http_imports() -> None:
    """The probe itself works: importing the app does pull FastAPI in."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(module="reward_server.service.app")], capture_output=True, text=True,
        check=True,
    ).stdout
    assert "fastapi" in json.loads(out) and "reward_server.service.app" in json.loads(out)
