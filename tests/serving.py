"""Start the real service (uvicorn on a free loopback port) for tests and benchmarks.

The socket is bound here and handed to uvicorn, so there is no window in which another process
can take the port between choosing it and listening on it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import uvicorn
from fastapi import FastAPI

from reward_server.embeddings.table import EmbeddingTable
from reward_server.items.settings import Settings
from reward_server.service.app import create_app
from reward_server.service.connections import server_config


@dataclass
class RunningServer:
    url: str
    app: FastAPI
    settings: Settings


@contextmanager
def serve_app(app: FastAPI, config: uvicorn.Config | None = None) -> Iterator[str]:
    """Any ASGI app under uvicorn on a free loopback port (a trainer's own server, too); yields its URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(config or uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@contextmanager
def running_server(table: EmbeddingTable, /, **settings: object) -> Iterator[RunningServer]:
    config_settings = Settings(host="127.0.0.1", port=0, **settings)
    app = create_app(table, config_settings)
    # The service's own uvicorn configuration (read deadlines, connection cap), quieter logs.
    config = server_config(app, config_settings.model_copy(update={"log_level": "warning"}))
    with serve_app(app, config) as url:
        yield RunningServer(url=url, app=app, settings=config_settings)


@dataclass
class ServerProcess:
    url: str
    proc: subprocess.Popen[str]

    @property
    def pid(self) -> int:
        return self.proc.pid


@contextmanager
def server_process(*flags: str, env: dict[str, str] | None = None, ready_s: float = 120) -> Iterator[ServerProcess]:
    """``reward-server serve FLAGS`` in its own process, as a user starts it (its RSS, descriptors and
    exit are its own), on a free loopback port; yields once ``/readyz`` answers 200, and stops it
    with SIGTERM at the end. A server that exits during start-up fails with what it printed."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "reward_server", "serve", "--port", str(port), "--log-level", "warning", *flags],
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited during start-up: {proc.stderr.read() if proc.stderr else ''}")
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not become ready")
            time.sleep(0.2)
        yield ServerProcess(url, proc)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
