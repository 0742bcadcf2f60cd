"""Slow clients cannot hold the server's connections (issue: 1,000 header-trickling and 1,000
body-trickling connections for 30 s were never closed; file descriptors 19 -> 1,019). A real
`reward-server serve` in its own process, its descriptors counted in /proc."""

from __future__ import annotations

import os
import socket
import threading
import time

import httpx
from serving import server_process

JSON = {"content-type": "application/json"}


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.settimeout(30)
    return sock


def read_answer(sock: socket.socket) -> bytes:
    """What the server sends before it closes the connection."""
    chunks = []
    while True:
        try:
            data = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def test_a_thousand_slow_connections_are_closed_at_their_deadline() -> None:
    with server_process("--header-timeout-seconds", "2", "--body-timeout-seconds", "2") as srv:
        url, port, pid = srv.url, int(srv.url.rsplit(":", 1)[1]), srv.pid
        baseline = open_fds(pid)
        header_trickle = [connect(port) for _ in range(500)]
        body_trickle = [connect(port) for _ in range(500)]
        for sock in header_trickle:
            sock.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\n")  # headers never end
        for sock in body_trickle:
            sock.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                         b"content-length: 1000\r\n\r\n{\"items\": [")  # the body never ends
        opened = time.monotonic()
        time.sleep(0.5)
        held = open_fds(pid)
        for socks, byte in ((header_trickle, b"X"), (body_trickle, b" ")):  # one byte more: a trickle
            for sock in socks:
                try:
                    sock.send(byte)
                except OSError:
                    pass
        answers = {}

        def drain(name: str, socks: list[socket.socket]) -> None:
            answers[name] = [read_answer(sock) for sock in socks]

        readers = [threading.Thread(target=drain, args=(name, socks))
                   for name, socks in (("headers", header_trickle), ("body", body_trickle))]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join(timeout=60)
        closed_after = time.monotonic() - opened
        for sock in header_trickle + body_trickle:
            sock.close()
        time.sleep(0.5)
        after = open_fds(pid)
        assert httpx.get(url + "/healthz").status_code == 200  # and it still serves
    assert held >= baseline + 900, (baseline, held)  # the connections were really held
    assert 2.0 <= closed_after < 10.0, closed_after
    for name, stage in (("headers", b"request line and headers"), ("body", b"request body")):
        assert len(answers[name]) == 500
        assert all(answer.startswith(b"HTTP/1.1 408 ") and stage in answer for answer in answers[name]), answers[name][0]
    assert after <= baseline + 5, (baseline, after)


def test_connections_beyond_the_cap_are_answered_503() -> None:
    with server_process("--max-connections", "50") as srv:
        url, port = srv.url, int(srv.url.rsplit(":", 1)[1])
        idle = [connect(port) for _ in range(50)]
        time.sleep(0.3)
        one_more = connect(port)
        one_more.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = read_answer(one_more)
        one_more.close()
        for sock in idle:
            sock.close()
        time.sleep(0.3)
        assert httpx.get(url + "/healthz").status_code == 200  # room again
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 ") and b"retry-after: 1" in head.lower()
    assert b'"type": "busy"' in body and b"--max-connections" in body
