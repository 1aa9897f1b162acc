"""HTTP and Open Inference gRPC side by side, over the one data plane of a worker's app.

The HTTP app (``ferry.http``) knows nothing of gRPC: this module starts the gRPC server once the
app's own start-up is done (models loading, or loaded with ``--workers``), on the same event loop
and over the same ``DataPlane``, and stops it before the app releases what both use.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from ferry.http.dispatch import FerryApp
from ferry.settings import Settings

Lifespan = Callable[[Any], AbstractAsyncContextManager[Any]]


def with_grpc(app: FerryApp, settings: Settings) -> FerryApp:
    """Serve gRPC on ``--grpc-port`` (0: off) for as long as the app's lifespan; a failed bind stops start-up."""
    if not settings.grpc_port:
        return app
    router = app.app.router
    inner: Lifespan = router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(starlette: Any) -> AsyncIterator[None]:
        from ferry.grpc.server import limits, start_server  # imported only by a server that serves gRPC

        async with inner(starlette):
            # 1. The app has started (with --workers, its models are loaded): gRPC binds now, and alone on its
            #    port unless it is shared by the workers of this one server.
            grpc_server = await start_server(
                app.plane,
                settings.host,
                settings.grpc_port,
                settings.max_body_bytes,
                app.auth,
                app.state.tracing,
                shared=settings.workers > 1,
                max_inflight_bytes=settings.max_inflight_bytes,
                bounds=limits(settings),
            )
            try:
                yield
            finally:
                # 2. On shutdown, stop gRPC first, letting in-flight calls finish within the drain timeout;
                #    only then does the app close the model pool they compute on.
                await grpc_server.stop(settings.drain_timeout)

    router.lifespan_context = lifespan
    return app
