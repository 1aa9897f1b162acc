"""The one request pipeline: both transports call it, nothing wrapped around the app is bypassed.

In process, over the real app and the real connection class (``BoundedHttpProtocol``) on a recording
transport, composed by ``FerryConfig.load`` as ``ferry serve`` composes it. A request whose body is in
whole is answered by the pipeline straight from the connection (``answered_whole`` counts those); the
same request with ``Expect: 100-continue`` goes the ASGI way. The two must write the same bytes.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
from importlib.metadata import requires, version
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from tests.test_lane import RecordingTransport

from ferry.http.app import create_app
from ferry.http.dispatch import FerryApp
from ferry.server.connections import PRIVATE_NAMES as CONNECTION_NAMES
from ferry.server.connections import BoundedHttpProtocol, ConnectionLimits
from ferry.server.lane import PRIVATE_NAMES
from ferry.server.run import FerryConfig
from ferry.settings import Settings

TOKEN = "s3cret"
IRIS = b'{"length": 5.1, "width": 2.4}'
V2 = b'{"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP64", "data": [5.1, 2.4]}]}'
ROUTES = {
    "name": "router",
    "rules": [{"name": "pinned", "match": {"headers": {"x-arm": "one"}}, "to": {"model": "iris", "version": "1"}}],
    "default": {"to": {"model": "iris"}},
}
BEARER = {"Authorization": f"Bearer {TOKEN}"}
# (name, method, path, body, headers, status)
MATRIX: list[tuple[str, str, str, bytes, dict[str, str], int]] = [
    ("good", "POST", "/models/iris/predict", IRIS, BEARER, 200),
    ("v2", "POST", "/v2/models/iris/infer", V2, BEARER, 200),
    ("bad json", "POST", "/models/iris/predict", b'{"length": ', BEARER, 400),
    ("unknown model", "POST", "/models/nope/predict", IRIS, BEARER, 404),
    ("405", "GET", "/v2/models/iris/infer", b"", BEARER, 405),
    ("too large", "POST", "/models/iris/predict", b"[" + b"1.0, " * 1000 + b"1.0]", BEARER, 413),
    ("auth missing", "POST", "/models/iris/predict", IRIS, {}, 401),
    ("auth wrong", "POST", "/models/iris/predict", IRIS, {"X-API-Key": "nope"}, 401),
    ("api key", "POST", "/models/iris/predict", IRIS, {"X-API-Key": TOKEN}, 200),
    ("routed", "POST", "/models/router/predict", IRIS, BEARER, 200),
    ("routed by rule", "POST", "/models/router/predict", IRIS, {**BEARER, "X-Arm": "one"}, 200),
    ("routed compat", "POST", "/predict", IRIS, BEARER, 200),
    ("routed metadata", "GET", "/v2/models/router", b"", BEARER, 200),
    ("routed bad json", "POST", "/models/router/predict", b"{", BEARER, 400),
]


@pytest.fixture(scope="module")
def app(example_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> FerryApp:
    routes = tmp_path_factory.mktemp("routes") / "routes.yaml"
    routes.write_text(yaml.safe_dump(ROUTES))
    settings = Settings(
        repo=example_repo, console=False, trust_code=True, auth_tokens=TOKEN, routes=str(routes), max_body_bytes=4096
    )
    app = create_app(settings)
    app.state.registry.load_all()
    return app


def _config(app: Any) -> FerryConfig:
    config = FerryConfig(
        app,
        http=BoundedHttpProtocol,
        server_header=False,
        date_header=False,
        log_config=None,
        connection_limits=ConnectionLimits.from_settings(Settings()),
    )
    config.load()
    return config


def _connection(config: FerryConfig) -> tuple[BoundedHttpProtocol, RecordingTransport]:
    from uvicorn.server import ServerState

    protocol = BoundedHttpProtocol(config, ServerState(), app_state={})
    transport = RecordingTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    return protocol, transport


def _request(method: str, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Request-ID: same\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return head.encode() + b"Content-Length: %d\r\n\r\n" % len(body) + body


async def _served(config: FerryConfig, data: bytes) -> tuple[bytes, int]:
    """What the connection writes for ``data``, and how many requests the pipeline answered from it."""
    protocol, transport = _connection(config)
    protocol.data_received(data)
    for _ in range(2000):
        await asyncio.sleep(0.001)
        if transport.written.endswith(b"}") or (transport.written and b"content-length: 0" in transport.written):
            break
    await asyncio.sleep(0.01)
    return transport.written, protocol.answered_whole


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status"), [c[1:] for c in MATRIX], ids=[c[0] for c in MATRIX]
)
async def test_the_connection_and_the_asgi_adapter_write_the_same_reply(
    anyio_backend: str, app: FerryApp, method: str, path: str, body: bytes, headers: dict[str, str], status: int
) -> None:
    config = _config(app)
    assert config.whole_requests is app
    direct, answered = await _served(config, _request(method, path, body, headers))
    assert answered == 1, "the pipeline answered from the connection"
    through_asgi, answered = await _served(config, _request(method, path, body, {**headers, "Expect": "100-continue"}))
    assert answered == 0
    through_asgi = through_asgi.removeprefix(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert direct == through_asgi
    assert direct.startswith(b"HTTP/1.1 %d " % status)
    assert b"\r\nx-request-id: same\r\n" in direct
    if "router" in path or path == "/predict":
        assert b"\r\nx-ferry-route: " in direct


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_with_auth_and_routes_a_whole_body_predict_is_answered_by_the_connection(
    anyio_backend: str, app: FerryApp
) -> None:
    written, answered = await _served(_config(app), _request("POST", "/models/iris/predict", IRIS, BEARER))
    assert answered == 1
    assert written.endswith(b'{"prediction":"virginica"}')


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_middleware_around_the_app_is_not_bypassed(anyio_backend: str, app: FerryApp) -> None:
    seen: list[str] = []

    async def middleware(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            seen.append(scope["path"])
        await app(scope, receive, send)

    config = _config(middleware)
    assert config.whole_requests is None
    written, answered = await _served(config, _request("POST", "/models/iris/predict", IRIS, BEARER))
    assert seen == ["/models/iris/predict"] and answered == 0
    assert written.endswith(b'{"prediction":"virginica"}')


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_x_forwarded_for_is_applied_on_the_connections_path(
    anyio_backend: str, app: FerryApp, caplog: pytest.LogCaptureFixture
) -> None:
    """As uvicorn's proxy-headers middleware would: the trusted peer's X-Forwarded-For is the client logged."""
    caplog.set_level(logging.INFO, logger="ferry.access")
    headers = {**BEARER, "X-Forwarded-For": "10.0.0.7"}
    for expect in ({}, {"Expect": "100-continue"}):
        caplog.clear()
        await _served(_config(app), _request("POST", "/models/iris/predict", IRIS, {**headers, **expect}))
        [line] = [r for r in caplog.records if r.name == "ferry.access"]
        assert line.client == "10.0.0.7"  # type: ignore[attr-defined]


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_request_whose_client_hung_up_is_logged_499_on_both_paths(
    anyio_backend: str, app: FerryApp, caplog: pytest.LogCaptureFixture
) -> None:
    """The connection cancels a request whose client went; either path logs it once, with nginx's 499."""
    caplog.set_level(logging.INFO, logger="ferry.access")
    release = asyncio.Event()
    plane = app.plane
    infer = plane.infer

    async def slow_infer(*args: Any, **kwargs: Any) -> Any:
        await release.wait()
        return await infer(*args, **kwargs)

    plane.infer = slow_infer  # type: ignore[method-assign]
    try:
        for expect in ({}, {"Expect": "100-continue"}):
            caplog.clear()
            protocol, transport = _connection(_config(app))
            protocol.data_received(_request("POST", "/models/iris/predict", IRIS, {**BEARER, **expect}))
            for _ in range(20):
                await asyncio.sleep(0.001)
            protocol.connection_lost(None)
            for _ in range(20):
                await asyncio.sleep(0.001)
            lines = [r for r in caplog.records if r.name == "ferry.access"]
            assert [(r.status, r.path) for r in lines] == [(499, "/models/iris/predict")]  # type: ignore[attr-defined]
            assert b"HTTP/1.1 " not in transport.written.removeprefix(b"HTTP/1.1 100 Continue\r\n\r\n")
    finally:
        del plane.infer
        release.set()


def test_the_lanes_private_uvicorn_names_exist_in_the_installed_uvicorn() -> None:
    """Fails when uvicorn drifts: each name the lane and the connection layer use, and the installed version in
    the pinned range."""
    for owner, name in (*PRIVATE_NAMES, *CONNECTION_NAMES):
        source = inspect.getsource(owner)
        assert hasattr(owner, name) or re.search(rf"self\.{name}\b", source), f"{owner.__name__}.{name} is gone"
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    assert list(inspect.signature(HttpToolsProtocol._start_asgi_task).parameters) == ["self", "cycle", "app"]
    [pinned] = [Requirement(r) for r in requires("ferry") or [] if r.startswith("uvicorn")]
    assert pinned.specifier.contains(version("uvicorn")), f"uvicorn {version('uvicorn')} is outside {pinned}"
