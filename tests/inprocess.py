"""Ferry composed in this process, as ``ferry serve`` composes it, for tests that only send requests.

``InProcessServer(repo, *options)`` reads the options with ``ferry serve``'s own parser (``plain_serve_settings``),
passes the settings through ``FERRY_*`` variables as the CLI hands them to its worker, composes the worker with
``ferry.server.compose.compose`` and runs its lifespan with uvicorn's ``LifespanOn`` (models loaded and warm) on
an event loop of its own thread. Its ``client`` is an ``httpx.Client`` whose transport writes each request's bytes
into the real connection class (``BoundedHttpProtocol`` under ``FerryConfig.load``, as uvicorn would) over an
in-memory socket, and reads the reply back with h11: the head limits, the whole-request lane, the ASGI adapter,
the pipeline and the app all run as in a process. What only a process shows (stdout's access log lines, exit
codes, signals, sockets, workers, gRPC and probe ports) stays on ``conftest.ServerProcess``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Iterator
from email.utils import formatdate
from pathlib import Path
from typing import Any

import anyio.from_thread
import h11
import httpx
import pytest
import typer
from uvicorn.lifespan.on import LifespanOn
from uvicorn.server import ServerState

from ferry.cli.entry import plain_serve_settings
from ferry.cli.options import settings_command
from ferry.cli.serve import repository_problem, serve_layout
from ferry.http.dispatch import FerryApp
from ferry.server.compose import compose
from ferry.server.connections import BoundedHttpProtocol, ConnectionLimits
from ferry.server.run import FerryConfig
from ferry.serving.plane import Plane
from ferry.settings import Settings

# What conftest.ServerProcess gives a child: gRPC and the probe port off, the test (the operator) trusting the code.
PROCESS_ENV = {"FERRY_GRPC_PORT": "0", "FERRY_PROBE_PORT": "0", "FERRY_TRUST_CODE": "1"}
PEER, SOCK = ("127.0.0.1", 50000), ("127.0.0.1", 8000)
REPLY_TIMEOUT_S = 30.0


def serve_settings(repo: Path | str, *options: str, env: dict[str, str] | None = None) -> Settings:
    """The settings ``ferry serve REPO OPTIONS`` would start with, under ``ServerProcess``'s environment."""
    environ = {**PROCESS_ENV, **os.environ, **(env or {})}
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(environ)
    try:
        # ferry.cli.entry's parser; --routes, --tracing and --model-uri go to typer's command, as there.
        settings = plain_serve_settings(["serve", str(repo), *options]) or _typer_settings(str(repo), *options)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    settings = serve_layout(settings)
    problem = repository_problem(settings)
    assert problem is None, problem
    # The CLI hands the worker its settings as FERRY_* variables (run_server, create_app_from_env).
    return Settings.from_env(settings.to_env())


def _typer_settings(*args: str) -> Settings:
    """The settings that ``ferry serve ARGS``'s typer command (``ferry.cli.main``) hands to ``serve``."""
    given: list[Settings] = []

    def serve(settings: Settings) -> None:
        given.append(dataclasses.replace(settings, repo=settings.repo.resolve()))  # as ferry.cli.main.serve

    app = typer.Typer()
    app.command("serve")(settings_command(serve, Settings, arguments=("repo",), panels=True))  # as ferry.cli.main
    typer.main.get_command(app).main(list(args), "serve", standalone_mode=False)
    return given[0]


class _Socket(asyncio.Transport):
    """The server's end of one connection: what the protocol writes is parsed as the client's reply."""

    def __init__(self, reply: h11.Connection, done: asyncio.Future[None]) -> None:
        super().__init__()
        self.reply, self.done, self.closed = reply, done, False
        self.events: list[Any] = []

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": PEER, "sockname": SOCK}.get(name, default)

    def write(self, data: Any) -> None:
        self.reply.receive_data(bytes(data))
        self._read()

    def _read(self) -> None:
        while not self.done.done():
            try:
                event = self.reply.next_event()
            except h11.RemoteProtocolError as exc:
                self.done.set_exception(exc)
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if not isinstance(event, h11.InformationalResponse):
                self.events.append(event)
            if isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                self.done.set_result(None)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.reply.receive_data(b"")  # the server closed: a reply without a length ends here
            self._read()
            if not self.done.done():
                self.done.set_exception(httpx.RemoteProtocolError("server closed the connection without a reply"))

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_protocol(self, protocol: Any) -> None:
        pass


class _ConnectionTransport(httpx.BaseTransport):
    """httpx's transport: one connection per request, through ``BoundedHttpProtocol`` on the server's loop."""

    def __init__(self, server: InProcessServer) -> None:
        self.server = server

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        server = self.server
        events = server.portal.call(server.exchange, request.method, request.url, request.headers.raw, request.read())
        head, body = events[0], b"".join(bytes(e.data) for e in events if isinstance(e, h11.Data))
        assert isinstance(head, h11.Response)
        return httpx.Response(head.status_code, headers=list(head.headers), content=body, request=request)


class InProcessServer:
    """Ferry over ``repo`` with ``options`` in this process: ``client`` sends it requests; ``plane``, its data plane
    (``plane.metrics``); ``output()``, what it logged. ``env`` is read as ``ferry serve`` reads its ``FERRY_*``
    variables; unlike a child's environment it is not there while serving (a model that reads one needs a process).
    """

    def __init__(
        self, repo: Path | str, *options: str, env: dict[str, str] | None = None, wait_ready: bool = True
    ) -> None:
        self.settings = serve_settings(repo, *options, env=env)
        self.log = _Records()
        self._portal = anyio.from_thread.start_blocking_portal("asyncio")
        self.portal = self._portal.__enter__()
        try:
            self.server = compose(self.settings)  # as ferry.server.worker.create_app_from_env does
            self.config = FerryConfig(
                self.server.app,
                http=BoundedHttpProtocol,
                ws="none",
                access_log=False,
                log_config=None,
                connection_limits=ConnectionLimits.from_settings(self.settings),
            )
            self.config.load()
            self.state = ServerState()
            self.lifespan = LifespanOn(self.config)
            self.portal.call(self.lifespan.startup)
            if self.lifespan.should_exit:
                raise RuntimeError(f"ferry did not start:\n{self.output()}")
        except BaseException:
            self._portal.__exit__(None, None, None)
            self.log.close()
            raise
        self.url = f"http://127.0.0.1:{SOCK[1]}"
        self.client = httpx.Client(base_url=self.url, transport=_ConnectionTransport(self), timeout=REPLY_TIMEOUT_S)
        self.wait(ready=wait_ready)

    def wait(self, ready: bool, timeout: float = 60.0) -> None:
        """Until ``/ready`` answers 200 (every model loaded), else until no model is LOADING (some may be FAILED).

        Not ready: a process's ``/health`` first answers tens of milliseconds after its models began to load, and
        tests that then read the states rely on that; in process the first request comes at once.
        """
        deadline = time.monotonic() + timeout
        while True:
            answer = self.client.get("/ready")
            models = answer.json()["models"]  # (none listed until the load has begun)
            if answer.status_code == 200 or (not ready and models and all(m["state"] != "LOADING" for m in models)):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"ferry not {'ready' if ready else 'settled'} after {timeout}s:\n{self.output()}")
            time.sleep(0.02)

    @property
    def app(self) -> FerryApp:
        return self.server.app

    @property
    def plane(self) -> Plane:
        return self.server.plane

    def output(self) -> str:
        """What Ferry logged while serving, one line a record (a process writes these to stdout)."""
        return self.log.text()

    async def exchange(self, method: str, url: httpx.URL, headers: list[tuple[bytes, bytes]], body: bytes) -> list[Any]:
        """One request on a fresh connection; the reply's h11 events (head, data, end)."""
        reply = h11.Connection(h11.CLIENT)
        target = url.raw_path
        wire = reply.send(h11.Request(method=method, target=target, headers=headers))
        wire = (wire or b"") + (reply.send(h11.Data(data=body)) or b"") if body else wire or b""
        wire += reply.send(h11.EndOfMessage()) or b""
        # uvicorn's Server.on_tick: the Date header (this second's) and the configured ones (Server: uvicorn).
        date = [(b"date", formatdate(time.time(), usegmt=True).encode())] if self.config.date_header else []
        self.state.default_headers = date + self.config.encoded_headers
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        sock = _Socket(reply, done)
        protocol = BoundedHttpProtocol(self.config, self.state, app_state={})
        protocol.connection_made(sock)
        try:
            protocol.data_received(wire)
            await asyncio.wait_for(done, REPLY_TIMEOUT_S)
        finally:
            protocol.connection_lost(None)
        return sock.events

    def stop(self) -> None:
        try:
            self.client.close()
            self.portal.call(self.lifespan.shutdown)
        finally:
            self._portal.__exit__(None, None, None)
            self.log.close()


class _Records(logging.Handler):
    """Ferry's log records while a server runs."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.logger = logging.getLogger("ferry")
        self.level_was = self.logger.level
        self.logger.addHandler(self)
        if self.logger.getEffectiveLevel() > logging.INFO:
            self.logger.setLevel(logging.INFO)  # ferry serve logs at --log-level info

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def text(self) -> str:
        return "\n".join(self.lines)

    def close(self) -> None:
        self.logger.removeHandler(self)
        self.logger.setLevel(self.level_was)
        super().close()


@pytest.fixture(name="inprocess")
def inprocess_fixture() -> Iterator[Callable[..., InProcessServer]]:
    """``inprocess(repo, *options)``: Ferry over ``repo`` with ``ferry serve`` options, in process; all are stopped
    at the end of the test. A module uses it with ``from inprocess import inprocess_fixture``."""
    started: list[InProcessServer] = []

    def start(
        repo: Path | str, *options: str, env: dict[str, str] | None = None, wait_ready: bool = True
    ) -> InProcessServer:
        server = InProcessServer(repo, *options, env=env, wait_ready=wait_ready)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
