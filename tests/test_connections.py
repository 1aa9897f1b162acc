"""The connection layer against real ``ferry serve`` processes: every client-held resource is bounded,
probes never wait behind work, ports are exclusive, and workers stop, restart and rebalance cleanly.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

import ferry
from conftest import ServerProcess, free_port

MODELS = Path(__file__).parent / "models"
IRIS = {"length": 5.1, "width": 2.4}


def _module(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, MODELS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def slow_repo(tmp_path_factory: pytest.TempPathFactory, example_repo: Path) -> Path:
    """iris, a model that sleeps FERRY_TEST_SLEEP per call, and one that a negative input wedges."""
    repo = tmp_path_factory.mktemp("conn")
    tensor = {"kind": "tensor", "tensors": [{"name": "x", "shape": [-1, -1]}]}
    ferry.build(_module("sleepy").Sleepy, "sleepy", repo, version="1", input_schema=tensor, sample_input=[1.0])
    ferry.build(_module("wedge").Wedge, "wedge", repo, version="1", input_schema=tensor, sample_input=[1.0])
    shutil.copytree(example_repo / "iris", repo / "iris")
    return repo


def _raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


def _reply(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything the server sends until it closes the connection."""
    sock.settimeout(timeout)
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _json_refusal(reply: bytes, status: int, code: str) -> dict[str, str]:
    import json

    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0].startswith(f"HTTP/1.1 {status} "), reply[:200]
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    assert headers["content-type"] == "application/json" and headers["connection"] == "close"
    payload: dict[str, str] = json.loads(body)
    assert payload["code"] == code
    return headers | payload


# -- items 2 and 3: request heads and connections are bounded -------------------------------------------
def test_oversized_heads_get_a_json_431_before_they_are_buffered(serve: Any, slow_repo: Path) -> None:
    server: ServerProcess = serve(str(slow_repo))
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        # 100 MB announced; the server answers after 64 KiB, without reading the rest.
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000)
        reply = _json_refusal(_reply(sock), 431, "headers_too_large")
    assert reply["error"] == "request line and headers exceed 65536 bytes"
    many = b"".join(b"X-%d: a\r\n" % i for i in range(101))
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
        assert _json_refusal(_reply(sock), 431, "headers_too_large")["error"] == "more than 100 header lines"
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"not http at all\r\n\r\n")
        assert _json_refusal(_reply(sock), 400, "malformed")["error"] == "invalid HTTP request"
    # Within the limits, a large head is fine, and a kept-alive connection serves request after request.
    with httpx.Client(base_url=server.url) as client:
        headers = {f"x-{i}": "v" * 500 for i in range(90)}
        for _ in range(3):
            assert client.get("/health", headers=headers).json() == {"health": "ok"}
    assert "Traceback" not in server.output()


def test_half_sent_heads_are_closed_and_never_starve_other_clients(serve: Any, slow_repo: Path) -> None:
    """300 slowloris connections against a cap of 100: new clients are served, the slow ones closed."""
    _raise_fd_limit(4096)
    server: ServerProcess = serve(str(slow_repo), "--max-connections", "100", "--header-timeout", "2")
    slow = []
    try:
        for _ in range(300):
            sock = socket.create_connection(("127.0.0.1", server.port))
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            slow.append(sock)
        started = time.monotonic()
        for _ in range(5):  # fresh connections past the cap: the longest-stalled heads make room
            assert httpx.post(server.url + "/predict", json=IRIS, timeout=5).json() == {"prediction": "virginica"}
        assert time.monotonic() - started < 5
        # 200 of them closed without an answer to make room (the connections one accept pass takes in share its
        # time, so which ones is not fixed); a close before the server read their bytes is a reset
        evicted, still_open = 0, []
        for sock in slow:
            sock.setblocking(False)
            try:
                evicted += sock.recv(1) == b""
            except BlockingIOError:
                still_open.append(sock)
            except ConnectionResetError:
                evicted += 1
        assert evicted >= 195, evicted
        # the ones still open are cut off by --header-timeout, with a 408
        still_open[-1].setblocking(True)
        assert _json_refusal(_reply(still_open[-1], 8), 408, "request_timeout")["error"] == (
            "request headers not received within 2 s"
        )
    finally:
        for sock in slow:
            sock.close()


def test_a_silent_connection_is_closed_after_the_header_timeout(serve: Any, slow_repo: Path) -> None:
    server: ServerProcess = serve(str(slow_repo), "--header-timeout", "1")
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        started = time.monotonic()
        assert _reply(sock) == b""  # nothing was asked, so nothing is answered
        assert 0.8 < time.monotonic() - started < 5


def test_an_idle_kept_alive_connection_is_closed_after_the_keep_alive_timeout(serve: Any, slow_repo: Path) -> None:
    """After a reply, a client that keeps the connection and sends nothing holds it only uvicorn's 5 s."""
    server: ServerProcess = serve(str(slow_repo), "--header-timeout", "30")
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        started = time.monotonic()
        reply = _reply(sock, 15)
        assert reply.startswith(b"HTTP/1.1 200 ") and b'{"health":"ok"}' in reply  # answered, then closed idle
        assert 4.5 < time.monotonic() - started < 10


def test_past_the_connection_cap_a_json_503_with_retry_after(serve: Any, slow_repo: Path) -> None:
    """Every connection busy: a newcomer is refused at once in JSON, and closed; uvicorn answered text/plain."""
    server: ServerProcess = serve(str(slow_repo), "--max-connections", "4", env={"FERRY_TEST_SLEEP": "1.0"})

    async def busy_then_one_more() -> tuple[list[httpx.Response], bytes, float]:
        async with httpx.AsyncClient(base_url=server.url, timeout=20) as client:
            tasks = [asyncio.create_task(client.post("/models/sleepy/predict", json=[1.0])) for _ in range(4)]
            await asyncio.sleep(0.3)
            started = time.monotonic()
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            reply = await asyncio.wait_for(reader.read(), 5)  # read() returns once the server has closed
            elapsed = time.monotonic() - started
            writer.close()
            return list(await asyncio.gather(*tasks)), reply, elapsed

    busy, reply, elapsed = asyncio.run(busy_then_one_more())
    refused = _json_refusal(reply, 503, "overloaded")
    assert refused["retry-after"] == "1" and refused["error"] == "too many open connections; retry shortly"
    assert elapsed < 0.5
    assert [r.status_code for r in busy] == [200] * 4  # the work in flight is untouched


# -- item 4: probes never wait behind work -------------------------------------------------------------
def test_probes_answer_on_fresh_connections_while_keep_alive_clients_saturate_predict(
    serve: Any, slow_repo: Path
) -> None:
    probe_port = free_port()
    server: ServerProcess = serve(str(slow_repo), "--probe-port", str(probe_port))
    probe = f"http://127.0.0.1:{probe_port}"

    stop, served = threading.Event(), [0]

    async def saturate() -> None:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        async with httpx.AsyncClient(base_url=server.url, timeout=30, limits=limits) as client:

            async def hammer() -> None:
                while not stop.is_set():
                    try:
                        response = await client.post("/predict", json=IRIS)
                        served[0] += response.status_code == 200
                    except httpx.TransportError:
                        pass  # a kept-alive connection closed as it was reused: not what this test is about

            await asyncio.gather(*(hammer() for _ in range(200)))

    def probe_once(path: str) -> float:
        """A fresh connection per probe, from this thread, as kubelet does."""
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", probe_port), timeout=10) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert _reply(sock).startswith(b"HTTP/1.1 200 ")
        return time.monotonic() - started

    load = threading.Thread(target=lambda: asyncio.run(saturate()))
    load.start()
    try:
        time.sleep(1.0)
        waits = [probe_once(path) for path in ["/health", "/ready", "/metrics"] * 5]
    finally:
        stop.set()
        load.join(60)
    assert served[0] > 20  # the load was running throughout
    # Generous for a shared CI box (both CPUs oversubscribed, a probe thread waits for one): the bench
    # measures the p99 (README); the bug made these 5-10 s.
    assert max(waits) < 2.5, waits
    ready = httpx.get(probe + "/ready").json()
    assert ready["ready"] is True and {m["name"] for m in ready["models"]} == {"iris", "sleepy", "wedge"}
    assert "ferry_requests_total" in httpx.get(probe + "/metrics").text
    assert httpx.get(probe + "/models").status_code == 404  # only probes on this port


def test_a_wedged_request_loop_reads_as_not_live(serve: Any, slow_repo: Path) -> None:
    probe_port = free_port()
    server: ServerProcess = serve(str(slow_repo), "--probe-port", str(probe_port), env={"FERRY_TEST_WEDGE": "8"})
    probe = f"http://127.0.0.1:{probe_port}"
    assert httpx.get(probe + "/health").json() == {"health": "ok"}
    wedging = threading.Thread(
        target=lambda: httpx.post(server.url + "/models/wedge/predict", json=[-1.0], timeout=30), daemon=True
    )
    wedging.start()
    deadline = time.monotonic() + 7.5
    while (live := httpx.get(probe + "/health", timeout=2)).status_code == 200:
        assert time.monotonic() < deadline, "the probe still says live while the loop is blocked"
        time.sleep(0.2)
    assert live.status_code == 503 and live.json()["health"] == "stalled"
    assert httpx.get(probe + "/ready", timeout=2).status_code == 503
    wedging.join(15)
    time.sleep(0.3)
    assert httpx.get(probe + "/health").json() == {"health": "ok"}  # live again once the loop runs
    assert httpx.get(probe + "/ready").status_code == 200


# -- item 8: a failed reload keeps the serving version ----------------------------------------------------
def test_a_failed_reload_keeps_the_serving_version_ready(serve: Any, example_repo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(example_repo / "iris", repo / "iris")
    server: ServerProcess = serve(str(repo), "--admin", "--admin-unauthenticated")
    (repo / "iris" / "1" / "model.skops").write_bytes(b"tampered")
    reloaded = httpx.post(server.url + "/models/iris/reload")
    assert reloaded.status_code == 409
    assert reloaded.json()["loaded"][0]["state"] == "FAILED" and reloaded.json()["default_version"] == "1"
    assert httpx.get(server.url + "/ready").status_code == 200
    versions = httpx.get(server.url + "/models").json()["models"][0]["versions"]
    assert [(v["version"], v["state"]) for v in versions] == [("1", "READY")]
    assert httpx.post(server.url + "/predict", json=IRIS).json() == {"prediction": "virginica"}


# -- item 9: auth misconfiguration refuses to start ----------------------------------------------------
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--auth-tokens", ","], "error: --auth-tokens holds no token (only commas and spaces)"),
        (["--auth-tokens-file", "{empty}"], "holds no token (empty or only comments)"),
        (["--auth-tokens-file", "{comments}"], "holds no token (empty or only comments)"),
        (["--auth-tokens-file", "{missing}"], "No such file or directory"),
    ],
)
def test_auth_misconfiguration_refuses_to_start(
    args: list[str], message: str, example_repo: Path, tmp_path: Path
) -> None:
    files = {"empty": tmp_path / "empty", "comments": tmp_path / "comments", "missing": tmp_path / "missing"}
    files["empty"].write_text("\n  \n")
    files["comments"].write_text("# tokens go here\n#another\n")
    args = [a.format(**{k: str(v) for k, v in files.items()}) for a in args]
    result = subprocess.run(
        [sys.executable, "-m", "ferry", "serve", str(example_repo), *args, "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "FERRY_GRPC_PORT": "0", "FERRY_PROBE_PORT": "0"},
    )
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr + result.stdout
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


# -- item 10: ports are exclusive -----------------------------------------------------------------------
def test_a_second_server_on_a_port_in_use_fails_to_start(serve: Any, slow_repo: Path) -> None:
    grpc_port, probe_port = free_port(), free_port()
    first = serve(str(slow_repo), "--workers", "2", "--grpc-port", str(grpc_port), "--probe-port", str(probe_port))
    for args, option, port in [
        (["--grpc-port", str(grpc_port)], "--grpc-port", grpc_port),
        (["--probe-port", str(probe_port)], "--probe-port", probe_port),
        (["--port", str(first.port)], "--port", first.port),
    ]:
        argv = [sys.executable, "-m", "ferry", "serve", str(slow_repo), "--port", str(free_port()), *args]
        env = {**os.environ, "FERRY_GRPC_PORT": "0", "FERRY_PROBE_PORT": "0"}
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
        assert result.returncode == 1, result.stderr
        assert f"error: {option} {port} on 127.0.0.1 is in use by another process" in result.stderr
    # the first server (two workers on one gRPC port) is untouched
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    assert all(client.is_server_ready() for _ in range(6))
    assert httpx.get(first.url + "/ready").status_code == 200


# -- item 13: SIGTERM with workers stops accepting first -----------------------------------------------
def _worker_pids(parent: int) -> list[int]:
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    return [int(c) for c in children if "resource_tracker" not in Path(f"/proc/{c}/cmdline").read_text()]


def test_sigterm_with_workers_refuses_new_connections_while_draining(serve: Any, slow_repo: Path) -> None:
    server: ServerProcess = serve(str(slow_repo), "--workers", "2", env={"FERRY_TEST_SLEEP": "2.0"})
    results: list[httpx.Response] = []
    in_flight = threading.Thread(
        target=lambda: results.append(httpx.post(server.url + "/models/sleepy/predict", json=[3.0], timeout=20))
    )
    in_flight.start()
    time.sleep(0.3)
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(1.0)  # the supervisor looks at its signals twice a second
    assert server.proc.poll() is None  # still draining the request in flight
    with pytest.raises(ConnectionRefusedError):  # refused, not queued in a backlog that nobody accepts
        socket.create_connection(("127.0.0.1", server.port), timeout=2).close()
    in_flight.join(20)
    assert results and results[0].json() == {"prediction": [3.0]}
    assert server.proc.wait(20) == 0


# -- item 14: traffic rebalances after a worker restart ------------------------------------------------
def _connections_held(pid: int, port: int) -> int:
    """Established connections to ``port`` whose socket ``pid`` holds."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "01":
            inodes.add(fields[9])
    held = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        held += target.startswith("socket:[") and target[8:-1] in inodes
    return held


def test_after_a_worker_is_killed_keep_alive_clients_rebalance(serve: Any, slow_repo: Path) -> None:
    server: ServerProcess = serve(str(slow_repo), "--workers", "2", "--connection-max-age", "1")
    deadline = time.monotonic() + 30
    while len(_worker_pids(server.proc.pid)) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    original = _worker_pids(server.proc.pid)
    victim = original[0]
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=server.url, timeout=5) as keep_alive:
            while not stop.is_set():
                try:
                    response = keep_alive.post("/predict", json=IRIS)
                    assert response.status_code == 200
                    time.sleep(0.01)
                except httpx.TransportError:
                    pass  # the killed worker's connections are reset; the client reconnects

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.5)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while not (replacement := [p for p in _worker_pids(server.proc.pid) if p not in original]):
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.1)
        deadline = time.monotonic() + 60  # it accepts once its models are loaded: slow on a busy box
        started = f'"msg":"Application startup complete.","pid":{replacement[0]}'
        while started not in server.output():
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.1)
        # Then it takes keep-alive clients within seconds: each connection lives at most 1 s.
        # (Before, they stayed on the survivor for good.)
        deadline = time.monotonic() + 5
        while not any(_connections_held(p, server.port) for p in replacement):
            assert time.monotonic() < deadline, "no client moved to the restarted worker"
            time.sleep(0.1)
        response = httpx.post(server.url + "/predict", json=IRIS)
        assert response.json() == {"prediction": "virginica"}
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)


def test_a_kept_alive_connection_is_recycled_after_its_max_age(serve: Any, slow_repo: Path) -> None:
    server: ServerProcess = serve(str(slow_repo), "--connection-max-age", "0.5")
    with httpx.Client(base_url=server.url) as client:
        assert "connection" not in client.get("/health").headers
        time.sleep(0.7)
        assert client.get("/health").headers["connection"] == "close"
        assert client.get("/health").json() == {"health": "ok"}  # a new connection, served as usual


# -- item 15: a client may only shorten its deadline ---------------------------------------------------
def test_x_request_timeout_can_lower_the_deadline_but_never_raise_it(serve: Any, slow_repo: Path) -> None:
    server: ServerProcess = serve(str(slow_repo), "--request-timeout", "0.3", env={"FERRY_TEST_SLEEP": "1.5"})
    started = time.monotonic()
    longer = httpx.post(server.url + "/models/sleepy/predict", json=[1.0], headers={"X-Request-Timeout": "60"})
    assert longer.status_code == 504 and time.monotonic() - started < 1.2
    assert longer.json()["error"] == "request not served within its deadline of 0.3 s"
    shorter = httpx.post(server.url + "/models/sleepy/predict", json=[1.0], headers={"X-Request-Timeout": "100ms"})
    assert shorter.status_code == 504 and shorter.json()["error"] == "request not served within its deadline of 0.1 s"


def test_replies_go_out_whole_and_in_order(serve: Any, slow_repo: Path) -> None:
    """Each reply is one write (head held for its body); pipelined, HEAD and 100-continue requests still get theirs."""
    from ferry.server.connections import _OnePacketReply

    class Recording:
        def __init__(self) -> None:
            self.writes: list[bytes] = []

        def write(self, data: bytes) -> None:
            self.writes.append(data)

    transport = Recording()
    reply = _OnePacketReply(transport)  # type: ignore[arg-type]
    reply.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # goes at once, alone
    reply.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    reply.write(b"{}")
    reply.reply_complete()
    reply.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")  # a HEAD reply: no body, out at its end
    assert transport.writes == [b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
    reply.reply_complete()
    assert transport.writes[-1] == b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"

    server: ServerProcess = serve(str(slow_repo))
    body = b'{"length": 5.1, "width": 2.4}'
    post = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(post + b"\r\n" + body + b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n" + post + b"\r\n" + body)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        replies = _reply(sock).split(b"HTTP/1.1 ")[1:]
    assert [r.split(b"\r\n")[0] for r in replies] == [b"200 OK"] * 4
    answer = b'{"prediction":"virginica"}'
    assert [r.partition(b"\r\n\r\n")[2] for r in replies] == [answer, b"", answer, b'{"health":"ok"}']
    with socket.create_connection(("127.0.0.1", server.port)) as sock:  # the client waits for 100 before its body
        sock.sendall(post + b"Expect: 100-continue\r\nConnection: close\r\n\r\n")
        sock.settimeout(5)
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(body)
        assert _reply(sock).endswith(b'{"prediction":"virginica"}')
