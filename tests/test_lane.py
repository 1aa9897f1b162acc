"""The connection's lane: a request the pipeline serves, its body in whole, is answered without the ASGI messages.

The lane and the ASGI adapter call the one request pipeline, so every request here is sent twice to one
real server: as is (the lane), and with ``Expect: 100-continue`` (a transport fact the lane leaves to the
ASGI path: the client may wait for the interim reply before it sends the body). The two replies must be
the same, byte for byte but the ``date``: status, header names, values and order, body. Errors included.
Then the connection behaviours the lane takes over from uvicorn's ``send``: pipelining, HTTP/1.0 and
``Connection: close``.
"""

from __future__ import annotations

import gzip
import http.client
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import ServerProcess

LIMIT = 4096
IRIS = b'{"length": 5.1, "width": 2.4}'
V2 = b'{"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP64", "data": [5.1, 2.4]}]}'
# (name, path, body, headers, status)
CASES: list[tuple[str, str, bytes, dict[str, str], int]] = [
    ("native", "/models/iris/predict", IRIS, {}, 200),
    ("native rows", "/models/iris/predict", b"[[5.1, 2.4], [1.4, 0.2]]", {}, 200),
    ("pinned version", "/models/iris/versions/1/predict", IRIS, {}, 200),
    ("v2", "/v2/models/iris/infer", V2, {}, 200),
    ("v2 binary output", "/v2/models/iris/infer", V2[:-1] + b', "parameters": {"binary_data_output": true}}', {}, 200),
    ("kserve", "/v1/models/iris:predict", b'{"instances": [[5.1, 2.4]]}', {}, 200),
    ("seldon", "/seldon/score/api/v1.0/predictions", b'{"data": {"ndarray": [[1.0, 2.0]]}}', {}, 200),
    ("compat", "/predict", IRIS, {}, 200),
    ("text", "/models/reviews/predict", '{"text": "最高の映画でした！"}'.encode(), {}, 200),
    ("gzip", "/models/iris/predict", gzip.compress(IRIS), {"Content-Encoding": "gzip"}, 200),
    ("deadline", "/models/iris/predict", IRIS, {"X-Request-Timeout": "5"}, 200),
    ("bad json", "/models/iris/predict", b'{"length": ', {}, 400),
    ("missing field", "/models/iris/predict", b'{"length": 5.1}', {}, 400),
    ("v2 bad datatype", "/v2/models/iris/infer", V2.replace(b"FP64", b"FP65"), {}, 400),
    ("bad deadline", "/models/iris/predict", IRIS, {"X-Request-Timeout": "soon"}, 400),
    ("unknown model", "/models/nope/predict", IRIS, {}, 404),
    ("unknown version", "/models/iris/versions/9/predict", IRIS, {}, 404),
    ("too large", "/models/iris/predict", b"[" + b"1.0, " * 1000 + b"1.0]", {}, 413),
    ("gzip bomb", "/models/iris/predict", gzip.compress(b" " * 100_000), {"Content-Encoding": "gzip"}, 413),
    ("unsupported coding", "/models/iris/predict", IRIS, {"Content-Encoding": "br"}, 415),
]


@pytest.fixture(scope="module")
def server(example_repo: Path) -> Iterator[ServerProcess]:
    server = ServerProcess([str(example_repo), "--max-body-bytes", str(LIMIT)])
    yield server
    server.stop()


def ask(server: ServerProcess, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, list[Any], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request("POST", path, body, {"Content-Type": "application/json", **headers})
        response = connection.getresponse()
        return (
            response.status,
            [(k.lower(), v) for k, v in response.getheaders() if k.lower() != "date"],
            response.read(),
        )
    finally:
        connection.close()


@pytest.mark.parametrize(("path", "body", "headers", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_the_lane_answers_as_the_asgi_path(
    server: ServerProcess, path: str, body: bytes, headers: dict[str, str], expected: int
) -> None:
    fixed = {**headers, "X-Request-ID": "lane-check"}
    lane = ask(server, path, body, fixed)
    asgi = ask(server, path, body, {**fixed, "Expect": "100-continue"})
    assert lane == asgi
    status, reply_headers, _ = lane
    assert status == expected
    assert reply_headers[-1] == ("x-request-id", "lane-check")


def raw(server: ServerProcess, data: bytes, replies: int) -> bytes:
    """Send ``data`` in one write; read until ``replies`` replies have come or the server closed."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(data)
        received = b""
        while received.count(b"HTTP/1.") < replies or not received.endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        return received


def request(body: bytes, *, version: str = "1.1", extra: str = "") -> bytes:
    head = f"POST /models/iris/predict HTTP/{version}\r\nHost: x\r\nContent-Type: application/json\r\n{extra}"
    return head.encode() + b"Content-Length: %d\r\n\r\n" % len(body) + body


def test_pipelined_requests_are_answered_in_order(server: ServerProcess) -> None:
    rows = [b"[[1.4, 0.2]]", b"[[5.1, 2.4]]", b"[[4.5, 1.5]]"]
    received = raw(server, b"".join(request(r, extra=f"X-Request-ID: n{i}\r\n") for i, r in enumerate(rows)), 3)
    replies = received.split(b"HTTP/1.1 ")[1:]
    assert [r[:3] for r in replies] == [b"200"] * 3
    assert [r.split(b"x-request-id: ")[1][:2] for r in replies] == [b"n0", b"n1", b"n2"]
    assert [r.rsplit(b"\r\n\r\n", 1)[1] for r in replies] == [
        b'{"predictions":["setosa"]}',
        b'{"predictions":["virginica"]}',
        b'{"predictions":["versicolor"]}',
    ]


@pytest.mark.parametrize(("version", "extra"), [("1.0", ""), ("1.1", "Connection: close\r\n")])
def test_a_reply_that_ends_the_connection_says_so_and_closes(server: ServerProcess, version: str, extra: str) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request(IRIS, version=version, extra=extra))
        received = b""
        while chunk := sock.recv(65536):  # the server closes: recv returns b"" instead of waiting
            received += chunk
    assert received.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nconnection: close\r\n" in received
    assert received.endswith(b'{"prediction":"virginica"}')


def test_a_body_that_arrives_in_pieces_is_served(server: ServerProcess) -> None:
    """The lane takes only a body already in; one still arriving goes the ASGI way, with the same answer."""
    data = request(IRIS)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(data[:-10])
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(1)  # no answer before the body is in
        sock.settimeout(10)
        sock.sendall(data[-10:])
        received = b""
        while not received.endswith(b"}"):
            received += sock.recv(65536)
    assert received.startswith(b"HTTP/1.1 200 OK\r\n")
    assert received.endswith(b'{"prediction":"virginica"}')


class RecordingTransport:
    """What the protocol writes, as an asyncio transport that only records (tests/test_pipeline.py uses it too)."""

    def __init__(self) -> None:
        self.written, self.closed = b"", False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_protocol(self, protocol: Any) -> None:
        pass


class _App:
    """An ASGI app with a pipeline: records which of the two answered."""

    def __init__(self, lane_reply: Any, serves: bool = True) -> None:
        self.lane_reply, self.lane_calls, self.asgi_calls, self.serving = lane_reply, [], 0, serves

    def serves(self, method: str, path: str) -> bool:
        return self.serving

    async def answer(self, scope: Any, body: bytes) -> Any:
        self.lane_calls.append((scope["path"], body))
        return self.lane_reply

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.asgi_calls += 1
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"4")]})
        await send({"type": "http.response.body", "body": b"asgi"})


def _connection(app: _App) -> tuple[Any, RecordingTransport]:
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    from ferry.server.connections import BoundedHttpProtocol

    config = Config(app, http=BoundedHttpProtocol, proxy_headers=False, server_header=False, date_header=False)
    config.loaded_app = app
    config.whole_requests = app  # type: ignore[attr-defined]  # (as FerryConfig.load gives it)
    protocol = BoundedHttpProtocol(config, ServerState(), app_state={})
    transport = RecordingTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    return protocol, transport


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_whole_body_is_answered_by_the_lane_and_a_partial_one_by_the_app(anyio_backend: str) -> None:
    import asyncio

    from ferry.http.pipeline import Reply

    app = _App(Reply(200, [(b"content-length", b"4")], b"lane"))
    protocol, transport = _connection(app)
    protocol.data_received(request(IRIS))
    for _ in range(20):
        await asyncio.sleep(0)
    assert app.lane_calls == [("/models/iris/predict", IRIS)] and app.asgi_calls == 0
    assert transport.written == b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nlane"

    data = request(IRIS)
    protocol.data_received(data[:-5])  # the body is not in yet when the request's task starts
    for _ in range(5):
        await asyncio.sleep(0)
    protocol.data_received(data[-5:])
    for _ in range(20):
        await asyncio.sleep(0)
    assert app.asgi_calls == 1 and len(app.lane_calls) == 1
    assert transport.written.endswith(b"asgi")


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_request_the_pipeline_does_not_serve_goes_to_the_app(anyio_backend: str) -> None:
    import asyncio

    app = _App(None, serves=False)
    protocol, transport = _connection(app)
    protocol.data_received(request(IRIS))
    for _ in range(20):
        await asyncio.sleep(0)
    assert app.lane_calls == [] and app.asgi_calls == 1
    assert transport.written == b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nasgi"


def test_the_pipeline_serves_predict_routes_whatever_the_settings(example_repo: Path) -> None:
    """Auth, a routes file or tracing no longer send a predict request the slow way: only its route decides."""
    from ferry.http.app import create_app
    from ferry.settings import Settings

    for tokens in ("", "s3cret"):
        settings = Settings(repo=example_repo, console=False, access_log=False, trust_code=True, auth_tokens=tokens)
        app = create_app(settings)
        app.state.registry.load_all()
        assert app.serves("POST", "/models/iris/predict") and app.serves("POST", "/v2/models/iris/infer")
        assert app.serves("GET", "/models/iris/predict")  # (the pipeline answers its 405)
        assert not app.serves("GET", "/metrics") and not app.serves("GET", "/v2/models/iris")
