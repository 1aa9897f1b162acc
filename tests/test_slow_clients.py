"""Clients that connect and then send slowly or nothing never starve the others: the probe listener, the serving
port's request bodies and ``ferry gateway``, each against a real process on loopback."""

from __future__ import annotations

import resource
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

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


# -- item 6: request bodies that trickle in ----------------------------------------------------------------
SLOW_BODY = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"


def test_a_body_below_the_minimum_rate_gets_a_408(serve: Any, iris_repo: Path) -> None:
    server = serve(str(iris_repo), "--body-read-timeout", "1", "--min-body-rate", "100")
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(SLOW_BODY)
        started = time.monotonic()
        for _ in range(6):  # 6 bytes in 1.5 s: under way, but far below 100 bytes/s
            time.sleep(0.25)
            sock.sendall(b" ")
        sock.settimeout(5)
        reply = sock.recv(65536)
        assert time.monotonic() - started < 3.0  # well inside --body-timeout's 30 s
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ") and b"connection: close" in head
    assert orjson.loads(body)["error"].endswith("below the minimum of 100 bytes/s")
    assert orjson.loads(body)["code"] == "request_timeout"
    # A body that keeps its pace is served, however long it takes past the window.
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        payload = orjson.dumps(IRIS) + b" " * 400
        sock.sendall(SLOW_BODY.replace(b"1000", b"%d" % len(payload))[:-1])
        for i in range(0, len(payload), 50):  # 200 bytes/s for 2 s
            sock.sendall(payload[i : i + 50])
            time.sleep(0.25)
        sock.settimeout(5)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK")
    assert "Traceback" not in server.output()


def test_slow_bodies_filling_every_connection_are_evicted_for_new_clients(serve: Any, iris_repo: Path) -> None:
    """12 bodies trickling in hold every one of 12 connections: each new client closes the slowest and is served."""
    server = serve(str(iris_repo), "--max-connections", "12", "--body-read-timeout", "60")
    slow = []
    try:
        for i in range(12):
            sock = socket.create_connection(("127.0.0.1", server.port))
            sock.sendall(SLOW_BODY + b" " * i)  # the first sent the least: it is the slowest
            slow.append(sock)
        time.sleep(1.2)  # under way long enough for their pace to count
        for _ in range(3):
            answer = httpx.post(server.url + "/predict", json=IRIS, timeout=5)
            assert answer.status_code == 200, answer.text
            refill = socket.create_connection(("127.0.0.1", server.port))  # too new to have a pace: kept
            refill.sendall(SLOW_BODY)
            slow.append(refill)
        closed = [i for i, sock in enumerate(slow) if _closed_by_server(sock, 0.2)]
        assert closed == [0, 1, 2]  # the slowest each time
    finally:
        for sock in slow:
            sock.close()


# -- item 7: ferry gateway, with the serving port's connection layer ----------------------------------------
def start_gateway(
    upstream: str, tmp_path: Path, *args: str, fd_limit: int = 0, rules: list[Any] | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    """``ferry gateway`` in a child process, ``rules`` then iris at ``upstream``; ``fd_limit``: its RLIMIT_NOFILE."""
    path = tmp_path / "routes.yaml"
    routes = {"services": {"iris": {"url": upstream}}, "rules": rules or [], "default": {"to": {"model": "iris"}}}
    path.write_text(yaml.safe_dump(routes))
    port = free_port()

    def limit() -> None:
        if fd_limit:
            resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit))

    log = (tmp_path / "gateway.log").open("wb")
    command = [sys.executable, "-m", "ferry", "gateway", str(path), "--port", str(port), *args]
    gateway = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, preexec_fn=limit)
    deadline = time.monotonic() + 30
    while True:
        assert gateway.poll() is None and time.monotonic() < deadline, (tmp_path / "gateway.log").read_text()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                return gateway, port
        except httpx.TransportError:
            pass
        time.sleep(0.05)


def test_the_gateway_closes_half_sent_heads_and_serves_new_clients_past_its_cap(
    serve: Any, iris_repo: Path, tmp_path: Path
) -> None:
    upstream = serve(str(iris_repo))
    gateway, port = start_gateway(
        upstream.url, tmp_path, "--header-timeout", "1", "--max-client-connections", "20", "--health-interval", "0.2"
    )
    heads = []
    try:
        for _ in range(40):  # twice the cap of half-sent heads
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            heads.append(sock)
        for _ in range(5):
            answer = httpx.post(f"http://127.0.0.1:{port}/predict", json=IRIS, timeout=2)
            assert answer.json() == {"prediction": "virginica"}
        # Every half-sent head is closed: the oldest to make room, the rest at the 1 s head deadline with a 408.
        assert all(_closed_by_server(sock, 3.0) for sock in heads)
    finally:
        for sock in heads:
            sock.close()
        gateway.terminate()
        gateway.wait(10)
    assert "Traceback" not in (tmp_path / "gateway.log").read_text()


def test_the_gateway_at_its_file_limit_keeps_serving_and_logs_one_line(
    serve: Any, iris_repo: Path, tmp_path: Path
) -> None:
    """300 idle connections against a gateway that may open 200 files: no EMFILE, no traceback, still serving."""
    upstream = serve(str(iris_repo))
    gateway, port = start_gateway(upstream.url, tmp_path, "--max-connections", "16", fd_limit=200)
    idle = []
    try:
        for _ in range(300):
            idle.append(socket.create_connection(("127.0.0.1", port)))
        for _ in range(5):
            answer = httpx.post(f"http://127.0.0.1:{port}/predict", json=IRIS, timeout=2)
            assert answer.json() == {"prediction": "virginica"}
        # The line comes from the connection layer's next sweep (every 0.25 s), which a busy machine may delay.
        deadline = time.monotonic() + 5
        while "open connections at the cap" not in (tmp_path / "gateway.log").read_text():
            assert time.monotonic() < deadline, "no line about the cap within 5 s"
            time.sleep(0.1)
    finally:
        for sock in idle:
            sock.close()
        gateway.terminate()
        gateway.wait(10)
    log = (tmp_path / "gateway.log").read_text()
    assert "Traceback" not in log and "Too many open files" not in log, log[-2000:]
    assert "--max-client-connections 4096 lowered to 120" in log
    assert log.count("open connections at the cap") == 1, log[-2000:]


# -- item 13: bytes of request bodies held at once -----------------------------------------------------------
def test_bodies_past_the_inflight_bytes_get_a_503_and_probes_never_do(serve: Any, iris_repo: Path) -> None:
    server = serve(str(iris_repo), "--max-inflight-bytes", "1000")
    padded = orjson.dumps(IRIS) + b" " * (600 - len(orjson.dumps(IRIS)))
    headers = {"content-type": "application/json"}
    with socket.create_connection(("127.0.0.1", server.port)) as held:
        held.sendall(SLOW_BODY.replace(b"1000", b"600"))  # 600 bytes declared, 1 sent: held
        time.sleep(0.2)
        shed = httpx.post(server.url + "/predict", content=padded, headers=headers, timeout=5)
        assert shed.status_code == 503 and shed.headers["retry-after"] == "1"
        assert shed.json() == {
            "error": "request bodies in flight exceed 1000 bytes; retry shortly",
            "code": "overloaded",
        }
        # A body that still fits is served, and a request without one (a probe) never waits on bodies.
        assert httpx.post(server.url + "/predict", json=IRIS).json() == {"prediction": "virginica"}
        assert httpx.get(server.url + "/health").status_code == 200
    time.sleep(0.2)  # the held body's connection is gone: its bytes are released
    answer = httpx.post(server.url + "/predict", content=padded, headers=headers, timeout=5)
    assert answer.json() == {"prediction": "virginica"}
