"""Clients that connect and then send slowly or nothing never starve the others: the probe listener, the serving
port's request bodies and ``ferry gateway``, each against a real process on loopback."""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import free_port

IRIS = {"length": 5.1, "width": 2.4}


def _ask(port: int, request: bytes, timeout: float = 1.0) -> bytes:
    """One request on a fresh connection, as kubelet probes; everything answered until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def _closed_by_server(sock: socket.socket, timeout: float) -> bool:
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


@pytest.fixture(scope="module")
def iris_repo(tmp_path_factory: pytest.TempPathFactory, example_repo: Path) -> Path:
    repo = tmp_path_factory.mktemp("slow-clients")
    shutil.copytree(example_repo / "iris", repo / "iris")
    return repo


# -- item 4: idle sockets on the probe port ----------------------------------------------------------------
def test_idle_sockets_filling_the_probe_listener_never_fail_a_probe(serve: Any, iris_repo: Path) -> None:
    """80 sockets that send nothing, past the listener's 64: every probe is still answered at once."""
    probe_port = free_port()
    serve(str(iris_repo), "--probe-port", str(probe_port))
    idle = [socket.create_connection(("127.0.0.1", probe_port)) for _ in range(80)]
    try:
        time.sleep(0.2)  # all accepted: the listener is full of clients that say nothing
        started = time.monotonic()
        for _ in range(10):
            assert _ask(probe_port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 200 OK")
        assert time.monotonic() - started < 3.0
        # The idle ones are closed: the oldest to make room, the others at the 2 s head deadline.
        assert all(_closed_by_server(sock, 4.0) for sock in idle)
    finally:
        for sock in idle:
            sock.close()
