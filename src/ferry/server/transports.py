"""HTTP and Open Inference gRPC side by side, over the one data plane of a worker's app.

The HTTP app (``ferry.http``) knows nothing of gRPC: this module starts the gRPC server once the
app's own start-up is done (models loading, or loaded with ``--workers``), on the same event loop
and over the same ``DataPlane``, and stops it before the app releases what both use.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from ferry.http.dispatch import FerryApp
from ferry.settings import Settings


@contextlib.asynccontextmanager
async def grpc_beside(app: FerryApp, settings: Settings) -> AsyncIterator[None]:
    """Serve gRPC on ``--grpc-port`` (0: off) while the block runs, entered once the app has started (with
    --workers, its models are loaded); a failed bind stops start-up. ``ferry.server.worker.Server`` enters it."""
    if not settings.grpc_port:
        yield
        return
    from ferry.grpc.server import limits, start_server  # imported only by a server that serves gRPC

    # 1. gRPC binds now, alone on its port unless it is shared by the workers of this one server.
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
