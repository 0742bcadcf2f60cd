"""Debian packages that tests install for themselves: the real tools (Prometheus, Chromium) rather
than stand-ins, on a fresh CI machine too.

CI runs as root, so a missing tool is installed with apt-get. A failed install fails the test
instead of skipping it: a green CI must really have run the tool. Only where installing is not
possible at all (not root, or no apt-get) does a run outside CI skip, saying why; on CI
(``CI=true``) that fails too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading

import pytest

_apt_lock = threading.Lock()  # one apt-get at a time: dpkg holds a lock and a second run fails on it
_apt_updated = False  # one `apt-get update` per test process, however many packages it installs


def on_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def ensure_binaries(package: str, *binaries: str) -> list[str]:
    """Paths of ``binaries``, installing the Debian ``package`` (without recommends) if any is missing."""
    global _apt_updated
    found = [shutil.which(binary) for binary in binaries]
    if all(found):
        return [path for path in found if path]
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        why = "needs root" if os.geteuid() != 0 else "needs apt-get, and this machine has none"
        message = f"{' and '.join(binaries)} not installed, and installing it (apt-get install {package}) {why}"
        if on_ci():
            pytest.fail(message)
        pytest.skip(message)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with _apt_lock:
        commands = [] if _apt_updated else [["apt-get", "update", "-q"]]
        commands.append(["apt-get", "install", "-y", "-q", "--no-install-recommends", package])
        for command in commands:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, check=False)
            if done.returncode != 0:
                pytest.fail(
                    f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
                )
            if command[1] == "update":
                _apt_updated = True
    found = [shutil.which(binary) for binary in binaries]
    if not all(found):
        pytest.fail(f"the {package} package installed, but {', '.join(binaries)} are not all on PATH")
    return [path for path in found if path]
