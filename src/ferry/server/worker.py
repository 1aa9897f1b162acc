"""What each worker process serves: the Ferry app, gRPC beside it, and its heartbeat and probe listener."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from ferry.http.app import create_app
from ferry.http.dispatch import FerryApp
from ferry.server.probes import Heartbeat, ProbeAnswers, ProbeListener, bind_probe_socket
from ferry.server.transports import with_grpc
from ferry.settings import Settings

PROBE_SWITCH_INTERVAL_S = 0.001
Lifespan = Callable[[Any], AbstractAsyncContextManager[Any]]


def create_app_from_env() -> FerryApp:
    """uvicorn's factory in every worker: settings arrive as FERRY_* variables."""
    settings = Settings.from_env()
    app = with_probes(with_grpc(create_app(settings), settings), settings)
    # Start-up's imports stay for good: frozen, no collection walks them again (the load's own
    # collection, and every full one while serving, stays short), and a forked worker leaves
    # their pages shared. The collector is off until here when ``ferry.cli.entry`` started us.
    gc.freeze()
    gc.enable()
    return app


def with_probes(app: FerryApp, settings: Settings) -> FerryApp:
    """Run the heartbeat and, with ``--probe-port``, the probe listener for as long as the app's lifespan."""
    router = app.app.router
    inner: Lifespan = router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(starlette: Any) -> AsyncIterator[None]:
        heartbeat = Heartbeat()
        beating = asyncio.create_task(heartbeat.run())
        listener = None
        if settings.probe_port:
            # Bound before the models load, so /health answers at once; a port in use stops start-up.
            sock = bind_probe_socket(settings.host, settings.probe_port, shared=settings.workers > 1)
            state = app.state
            answers = ProbeAnswers(state.registry, state.service.metrics, heartbeat)
            listener = ProbeListener(sock, answers.answer)
            listener.start()
            # The probe thread needs the GIL for each step of a reply; while the request loop is busy it
            # gets it only every switch interval (5 ms by default), several times per probe.
            sys.setswitchinterval(PROBE_SWITCH_INTERVAL_S)
        try:
            async with inner(starlette):
                yield
        finally:
            if listener is not None:
                listener.close()
            beating.cancel()

    router.lifespan_context = lifespan
    return app
