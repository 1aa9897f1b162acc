"""Big request bodies are decoded off the event loop (issue 22 item 8): while four 7 MiB MLflow bodies decode,
``/health`` and a small predict on other connections are answered at once. A real ``ferry serve`` on loopback."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

SMALL = b'{"length": 5.1, "width": 2.4}'


def _ask(port: int, request: bytes, timeout: float = 60.0) -> tuple[float, bytes]:
    """One request on a fresh connection: seconds to the reply's head, and the status line."""
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        reply = b""
        while b"\r\n" not in reply:
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    return time.perf_counter() - started, reply.split(b"\r\n")[0]


def _post(path: str, body: bytes) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


@pytest.fixture(scope="module")
def iris_repo(tmp_path_factory: pytest.TempPathFactory, example_repo: Path) -> Path:
    repo = tmp_path_factory.mktemp("big-decodes")
    shutil.copytree(example_repo / "iris", repo / "iris")
    return repo


def test_big_mlflow_bodies_decode_off_the_loop(serve: Any, iris_repo: Path) -> None:
    server = serve(str(iris_repo))
    rows = [[(51 + i % 7) / 10, 2.4] for i in range(700_000)]
    big = _post("/invocations", orjson.dumps({"dataframe_split": {"columns": ["length", "width"], "data": rows}}))
    assert 6 * 2**20 < len(big) < 8 * 2**20
    results: list[tuple[float, bytes]] = []
    senders = [threading.Thread(target=lambda: results.append(_ask(server.port, big))) for _ in range(4)]
    for sender in senders:
        sender.start()
    time.sleep(0.5)  # the bodies are in, and decoding
    health, small = [], []
    while any(sender.is_alive() for sender in senders) and len(health) < 40:
        health.append(_ask(server.port, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 5.0))
        small.append(_ask(server.port, _post("/predict", SMALL), 5.0))
        time.sleep(0.05)
    for sender in senders:
        sender.join(120)
    assert len(results) == 4
    assert len(health) >= 5, "the big bodies were answered too soon for the check to mean anything"
    assert all(status.startswith(b"HTTP/1.1 200") for _, status in health + small), health + small
    waits = sorted(wait for wait, _ in health + small)  # (on the loop, each big body held it for seconds)
    assert waits[int(0.95 * len(waits))] < 0.2 and waits[-1] < 1.0, [round(wait, 3) for wait in waits]
