"""The composition root of a worker: one data plane, built from ``Settings``, handed to every transport.

``compose`` builds the ``Plane`` (registry, service, budget, ``DataPlane`` and ``ModelQueries``), the HTTP app
over it, and a ``Server`` that starts the probe listener, HTTP, the plane and gRPC in order under one lifespan
and stops them in reverse.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from ferry.http.app import build_app, plane_from_settings, plane_tasks
from ferry.http.dispatch import FerryApp
from ferry.server.ports import bind_listener
from ferry.server.probes import Heartbeat, ProbeAnswers, ProbeListener
from ferry.server.transports import grpc_beside
from ferry.serving.plane import Plane
from ferry.serving.registry import ModelRegistry
from ferry.settings import Settings

PROBE_SWITCH_INTERVAL_S = 0.001
Lifespan = Callable[[Any], AbstractAsyncContextManager[Any]]


def compose(settings: Settings, registry: ModelRegistry | None = None) -> Server:
    """The worker: its data plane, and HTTP, gRPC and the probe listener over it."""
    plane = plane_from_settings(settings, registry)
    return Server(build_app(settings, plane, serves_plane=False), plane, settings)


class Server:
    """The app, gRPC beside it, the heartbeat and the probe listener, over one ``Plane``.

    uvicorn runs the app and calls its lifespan: that lifespan is this object's, set once (``lifespan``),
    where each part is entered in order and left in reverse.
    """

    def __init__(self, app: FerryApp, plane: Plane, settings: Settings, started: Callable[[], None] = lambda: None):
        self.app, self.plane, self.settings = app, plane, settings
        self.started = started  # called once every part has started (``ferry.server.worker``: the collector on)
        self.http_lifespan: Lifespan = app.app.router.lifespan_context  # HTTP's own: drain handler, routes file
        app.app.router.lifespan_context = self.lifespan

    @contextlib.asynccontextmanager
    async def lifespan(self, starlette: Any) -> AsyncIterator[None]:
        settings, plane = self.settings, self.plane
        heartbeat = Heartbeat()
        # Counted by the process that serves (prometheus_client starts a forked worker's values afresh).
        plane.metrics.workers.set(1)
        beating = asyncio.create_task(heartbeat.run())
        listener = None
        try:
            if settings.probe_port:
                # 1. The probe listener, bound before the models load, so /health answers at once; a port in
                #    use stops start-up. It answers readiness from the plane, as HTTP and gRPC do.
                sock = bind_listener(settings.host, settings.probe_port, shared=settings.workers > 1)
                listener = ProbeListener(sock, ProbeAnswers(plane.queries, heartbeat).answer)
                listener.start()
                # The probe thread needs the GIL for each step of a reply; while the request loop is busy it
                # gets it only every switch interval (5 ms by default), several times per probe.
                sys.setswitchinterval(PROBE_SWITCH_INTERVAL_S)
            # 2. HTTP's own (SIGTERM's drain handler), 3. the plane: models loading (loaded, with --workers), then
            #    4. gRPC over it. Left in reverse: gRPC stops (in-flight calls drain) before the plane releases the
            #    pool both compute on.
            async with (
                self.http_lifespan(starlette),
                plane.lifespan(plane_tasks(settings, plane)),
                grpc_beside(plane, self.app.auth, settings),
            ):
                self.started()
                yield
        finally:
            if listener is not None:
                listener.close()
            beating.cancel()
