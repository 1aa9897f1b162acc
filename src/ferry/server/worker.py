"""What each worker process serves: one ``Server`` owning the Ferry app (its data plane and HTTP), gRPC beside
it, and the heartbeat and probe listener, started and stopped by one lifespan."""

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
from ferry.server.transports import grpc_beside
from ferry.settings import Settings

PROBE_SWITCH_INTERVAL_S = 0.001
Lifespan = Callable[[Any], AbstractAsyncContextManager[Any]]


def create_app_from_env() -> FerryApp:
    """uvicorn's factory in every worker: settings arrive as FERRY_* variables."""
    settings = Settings.from_env()
    app = Server(create_app(settings), settings).app
    # Start-up's imports stay for good: frozen, no collection walks them again (the load's own
    # collection, and every full one while serving, stays short), and a forked worker leaves
    # their pages shared. The collector stays off (as ``ferry.cli.entry`` left it) until the
    # server has started: ``with_probes``'s lifespan turns it on.
    gc.freeze()
    return app


def collect_from_now_on() -> None:
    """Freeze what start-up made (gRPC's import too), then turn the collector on.

    Off during start-up, it ran about fifty collections over objects that live for good anyway.
    """
    gc.freeze()
    gc.enable()


def create_app_before_fork(settings: Settings) -> FerryApp | None:
    """The app that ``--workers N`` fork from, its models loaded and warm; None where it cannot be.

    Loaded once here, a model's memory is paid once whatever the worker count: the workers inherit
    it copy-on-write, and each starts serving at once, a restarted one too. A worker that built the
    app and loaded the models itself held its own copy of each (a 150-tree forest served as the
    scikit-learn object: 4 workers 3.8x the memory of one), and even a compiled model's loading wrote
    to most of the pages it shared with the parent. The collector is frozen first (``load_all``), so
    no collection in a worker writes to the shared objects' headers. Not with ``--tracing``,
    ``--prediction-log`` or ``--routes``, whose threads and connections a fork does not carry, nor
    ``--max-memory``, which loads on demand; a model whose library starts threads loads in each worker
    (``ModelRegistry.survives_fork``).
    """
    if settings.tracing or settings.prediction_log or settings.routes:
        collect_from_now_on()  # (the supervisor's own)
        return None
    app = create_app_from_env()
    app.state.service.metrics.workers.set(0)  # the parent serves nothing; each worker counts itself
    if not settings.max_memory:
        app.state.registry.load_all(before_fork=True)
    collect_from_now_on()
    return app


class Server:
    """The composition root of a worker: the app, gRPC beside it, the heartbeat and the probe listener.

    uvicorn runs the app and calls its lifespan: that lifespan is this object's, set once (``lifespan``),
    where each part is entered in order and left in reverse.
    """

    def __init__(self, app: FerryApp, settings: Settings) -> None:
        self.app, self.settings = app, settings
        self.app_lifespan: Lifespan = app.app.router.lifespan_context  # the data plane's: models, pools, logs
        app.app.router.lifespan_context = self.lifespan

    @contextlib.asynccontextmanager
    async def lifespan(self, starlette: Any) -> AsyncIterator[None]:
        settings, state = self.settings, self.app.state
        heartbeat = Heartbeat()
        # Counted by the process that serves (prometheus_client starts a forked worker's values afresh).
        state.service.metrics.workers.set(1)
        beating = asyncio.create_task(heartbeat.run())
        listener = None
        try:
            if settings.probe_port:
                # 1. The probe listener, bound before the models load, so /health answers at once; a port in
                #    use stops start-up.
                sock = bind_probe_socket(settings.host, settings.probe_port, shared=settings.workers > 1)
                answers = ProbeAnswers(state.queries, heartbeat)
                listener = ProbeListener(sock, answers.answer)
                listener.start()
                # The probe thread needs the GIL for each step of a reply; while the request loop is busy it
                # gets it only every switch interval (5 ms by default), several times per probe.
                sys.setswitchinterval(PROBE_SWITCH_INTERVAL_S)
            # 2. The app: models loading (loaded, with --workers), then 3. gRPC over its data plane. Left in
            #    reverse: gRPC stops (in-flight calls drain) before the app releases the pool both compute on.
            async with self.app_lifespan(starlette), grpc_beside(self.app, settings):
                collect_from_now_on()  # started: the app, its models loading (loaded with --workers), gRPC
                yield
        finally:
            if listener is not None:
                listener.close()
            beating.cancel()
