"""Ferry's request pipeline behind granian's RSGI interface, for measurement only (issue 25; bench/granian.sh).

    FERRY_REPO=DIR granian --interface rsgi bench/granian_pipeline.py:app

The worker's data plane and HTTP app are built as ``ferry serve`` builds them (``plane_from_settings``,
``build_app``; settings from the ``FERRY_*`` environment, gRPC and the probe port off), and the plane's
lifespan runs in ``__rsgi_init__`` (models loaded and warm before granian accepts) and ends in
``__rsgi_del__``. Each request's body is read whole, made an ``Exchange``, answered by the pipeline
(``FerryApp.answer``, the call uvicorn's lane makes) and written with ``response_bytes``. A request the
pipeline does not serve (console, docs, metadata: Starlette's routes) gets a 404: Starlette is not
adapted here. None of ``ferry.server.connections``' bounds apply: granian's own options stand in.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from contextlib import AsyncExitStack
from typing import Any

from granian.rsgi import ProtocolClosed

from ferry.http.app import build_app, plane_from_settings, plane_tasks
from ferry.settings import Settings

NOT_SERVED = b'{"error":"not served behind granian (bench/granian_pipeline.py)","code":"http_404"}'
READY_WAIT_S = 120.0


class PipelineApp:
    """``__rsgi__(scope, protocol)``: one whole request in, the pipeline's reply out."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.plane = plane_from_settings(settings)
        self.app = build_app(settings, self.plane, serves_plane=False)
        self.stack = AsyncExitStack()

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        """Before granian serves: the plane's lifespan entered, every model loaded (and warmed by the registry)."""
        loop.run_until_complete(self.start())

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.run_until_complete(self.stack.aclose())

    async def start(self) -> None:
        await self.stack.enter_async_context(self.plane.lifespan(plane_tasks(self.settings, self.plane)))
        deadline = time.monotonic() + READY_WAIT_S
        while not self.plane.queries.ready():
            if time.monotonic() > deadline:
                raise RuntimeError(f"models not ready after {READY_WAIT_S:.0f} s: {self.plane.queries.readiness()}")
            await asyncio.sleep(0.05)

    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        if scope.proto != "http":
            return
        method, path = scope.method, scope.path
        if not self.app.serves(method, path):
            protocol.response_bytes(404, [("content-type", "application/json")], NOT_SERVED)
            return
        try:
            body = await protocol()
        except ProtocolClosed:  # the client left before its body was whole
            return
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in scope.headers.items()]
        host, _, port = scope.client.rpartition(":")
        asgi_scope = {
            "type": "http",
            "method": method,
            "path": path,
            "query_string": scope.query_string.encode("latin-1"),
            "headers": headers,
            "client": (host, int(port or 0)),
            "scheme": scope.scheme,
            "server": None,
            "http_version": scope.http_version,
        }
        reply = await self.app.answer(asgi_scope, body)
        protocol.response_bytes(
            reply.status,
            [(k.decode("latin-1"), v.decode("latin-1")) for k, v in reply.headers if k != b"content-length"],
            reply.body,
        )


def _settings() -> Settings:
    return dataclasses.replace(Settings.from_env(), grpc_port=0, probe_port=0, workers=1)


app = PipelineApp(_settings())
