"""HTTP and Open Inference gRPC side by side, over the one data plane of a worker's app.

The HTTP app (``ferry.http``) knows nothing of gRPC: this module starts the gRPC server once the
plane has started (models loading, or loaded with ``--workers``), on the same event loop and over
the same ``DataPlane``, and stops it before the plane releases what both use.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from ferry.auth import TokenAuth
from ferry.server.ports import bind_listener
from ferry.serving.plane import Plane
from ferry.settings import Settings


@contextlib.asynccontextmanager
async def grpc_beside(plane: Plane, auth: TokenAuth | None, settings: Settings) -> AsyncIterator[None]:
    """Serve gRPC over ``plane`` on ``--grpc-port`` (0: off) while the block runs, entered once the plane has
    started (with --workers, its models are loaded); a failed bind stops start-up. ``ferry.server.compose.Server``
    enters it; ``auth`` is HTTP's tokens (the same tokens on both)."""
    if not settings.grpc_port:
        yield
        return
    from ferry.grpc.server import limits, start_server  # imported only by a server that serves gRPC

    # 1. gRPC binds now, alone on its port unless it is shared by the workers of this one server.
    sock = bind_listener(settings.host, settings.grpc_port, shared=settings.workers > 1, backlog=2048)
    grpc_server = await start_server(
        plane.data,
        sock,
        settings.max_body_bytes,
        auth,
        plane.tracing,
        max_inflight_bytes=settings.max_inflight_bytes,
        bounds=limits(settings),
    )
    try:
        yield
    finally:
        # 2. On shutdown, stop gRPC first, letting in-flight calls finish within the drain timeout;
        #    only then does the app close the model pool they compute on.
        await grpc_server.stop(settings.drain_timeout)
