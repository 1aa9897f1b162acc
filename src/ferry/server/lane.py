"""The connection's lane: a request the app's pipeline serves, its body already whole, answered without ASGI.

uvicorn's request cycle costs a dozen ASGI messages, header checks and events per request; the lane
builds no messages: it calls the app's request pipeline (``ferry.http.pipeline``, the same one the ASGI
adapter calls after reading the body) and writes its reply in one write, completing the cycle as
uvicorn's ``send`` does. What it leaves to the ASGI path is transport only: a body still arriving, and
``Expect: 100-continue`` (the client waits for the interim reply before it sends the body).

The server is given the pipeline explicitly (``compose``): only when the app it runs *is* the pipeline's
ASGI adapter, so middleware wrapped around that app turns the lane off rather than being bypassed. This
is the one module that touches uvicorn's private names for it (``PRIVATE_NAMES``; the version range is
pinned in pyproject.toml and ``tests/test_pipeline.py`` fails when they drift).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol, cast

from uvicorn.config import Config
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]

# What the lane reads or calls of uvicorn beyond its documented API: (owner, name).
PRIVATE_NAMES = (
    (HttpToolsProtocol, "_start_asgi_task"),
    (HttpToolsProtocol, "tasks"),
    (HttpToolsProtocol, "flow"),
    (RequestResponseCycle, "run_asgi"),
    (RequestResponseCycle, "send_500_response"),
    (RequestResponseCycle, "scope"),
    (RequestResponseCycle, "body"),
    (RequestResponseCycle, "more_body"),
    (RequestResponseCycle, "waiting_for_100_continue"),
    (RequestResponseCycle, "disconnected"),
    (RequestResponseCycle, "keep_alive"),
    (RequestResponseCycle, "default_headers"),
    (RequestResponseCycle, "response_started"),
    (RequestResponseCycle, "response_complete"),
    (RequestResponseCycle, "message_event"),
    (RequestResponseCycle, "on_response"),
    (Config, "reset_contextvars"),
)


class Answer(Protocol):
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


class WholeRequests(Protocol):
    """The app's request pipeline, as the connection calls it (``ferry.http.dispatch.FerryApp``)."""

    def serves(self, method: str, path: str) -> bool: ...

    async def answer(self, scope: Scope, body: bytes) -> Answer: ...


class Forwarding(Protocol):
    """An app that applies ``X-Forwarded-*`` itself, given uvicorn's setting (``set_forwarded``)."""

    def set_forwarded(self, forwarded: Callable[[Scope], Awaitable[None]]) -> None: ...


def compose(config: Config, pipeline_host: type) -> WholeRequests | None:
    """After uvicorn's ``Config.load`` ran with ``proxy_headers`` off: give the lane the pipeline of the app
    the server runs, if that app is a ``pipeline_host`` itself (nothing wrapped around it), and apply the
    proxy headers as uvicorn would have (in the app, or by uvicorn's own middleware around another app)."""
    app = config.loaded_app
    if not isinstance(app, pipeline_host):
        if config.proxy_headers:
            config.loaded_app = ProxyHeadersMiddleware(app, trusted_hosts=config.forwarded_allow_ips)
        return None
    if config.proxy_headers:
        cast(Forwarding, app).set_forwarded(proxy_headers(config.forwarded_allow_ips))
    return cast(WholeRequests, app)


def proxy_headers(trusted_hosts: list[str] | str) -> Callable[[Scope], Awaitable[None]]:
    """What uvicorn's proxy-headers middleware does to a scope (its client and scheme), by that middleware."""

    async def nothing(scope: Scope, receive: Any, send: Any) -> None:
        return None

    middleware = ProxyHeadersMiddleware(nothing, trusted_hosts=trusted_hosts)  # type: ignore[arg-type]

    async def forwarded(scope: Scope) -> None:
        await middleware(scope, nothing, nothing)  # type: ignore[arg-type]

    return forwarded


class LaneProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol whose requests go to the app's pipeline when their body is whole."""

    def __init__(self, config: Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self.whole: WholeRequests | None = getattr(config, "whole_requests", None)
        self.lane_task: asyncio.Task[None] | None = None  # the request being answered, if any
        self.answered_whole = 0  # requests answered by the pipeline without ASGI (tests read it)

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        whole = self.whole
        if whole is None or self.config.reset_contextvars:
            HttpToolsProtocol._start_asgi_task(self, cycle, app)
            return
        task = self.loop.create_task(self._serve(cycle, app, whole))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)
        self.lane_task = task  # cancelled if the client goes: its queued work is then dropped, not computed

    async def _serve(self, cycle: RequestResponseCycle, app: Any, whole: WholeRequests) -> None:
        scope = cycle.scope
        if cycle.more_body or cycle.waiting_for_100_continue or not whole.serves(scope["method"], scope["path"]):
            await cycle.run_asgi(app)
            return
        try:
            reply = await whole.answer(scope, bytes(cycle.body))  # type: ignore[arg-type]
        except asyncio.CancelledError:
            if not cycle.disconnected:
                raise
            return  # the client went (logged 499 by the pipeline, counted as closed by the data plane)
        except BaseException as exc:
            self.logger.error("Exception in ASGI application\n", exc_info=exc)
            await cycle.send_500_response()
            return
        self.answered_whole += 1
        if cycle.disconnected:
            return
        if self.flow.write_paused:
            await self.flow.drain()
        content = [STATUS_LINE[reply.status]]
        for name, value in (*cycle.default_headers, *reply.headers):
            content += (name.lower(), b": ", value, b"\r\n")  # (as uvicorn's send writes them)
        if not cycle.keep_alive:
            content.append(b"connection: close\r\n")
        content += (b"\r\n", reply.body)
        self.transport.write(b"".join(content))
        cycle.response_started = cycle.response_complete = True
        cycle.message_event.set()
        if not cycle.keep_alive:
            self.transport.close()
        cycle.on_response()
        cycle.on_response = lambda: None

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)  # marks the cycle disconnected
        task = self.lane_task
        if task is not None and not task.done():
            task.cancel()  # a request still queued or computing for a client that has gone
