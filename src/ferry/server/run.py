"""``run(settings)``: check the ports, then serve with one process or a supervisor of workers."""

from __future__ import annotations

import os
import sys
from typing import Any

import uvicorn

from ferry.server.connections import BoundedHttpProtocol, ConnectionLimits
from ferry.server.lane import WholeRequests, compose
from ferry.server.ports import check_ports
from ferry.server.supervisor import Supervisor
from ferry.settings import Settings

APP = "ferry.server.worker:create_app_from_env"


class FerryConfig(uvicorn.Config):
    """uvicorn's config plus the connection limits; pickled as it is to every worker.

    Its ``load`` composes the server: the connections get the request pipeline of the app they run
    (``whole_requests``) only when that app is Ferry's ASGI adapter itself, nothing wrapped around it.
    """

    def __init__(self, *args: Any, connection_limits: ConnectionLimits, **kwargs: Any) -> None:
        self.configured_by = os.getpid()
        super().__init__(*args, **kwargs)  # (configures logging, in this process)
        self.connection_limits = connection_limits
        self.whole_requests: WholeRequests | None = None

    def load(self) -> None:
        # uvicorn's proxy-headers middleware would wrap the app: off while uvicorn loads it, then applied by
        # ``compose``, in the app (for both of its paths) or as that middleware around any other app.
        proxy_headers, self.proxy_headers = self.proxy_headers, False
        try:
            super().load()
        finally:
            self.proxy_headers = proxy_headers
        # Ferry's app is a FerryApp only if its module is loaded; the gateway's config need not import it.
        dispatch = sys.modules.get("ferry.http.dispatch")
        self.whole_requests = compose(self, dispatch.FerryApp if dispatch is not None else type(None))

    def configure_logging(self) -> None:
        # A forked worker inherits its parent's logging as it is; configuring it again in each worker
        # rewrote objects the workers otherwise share (about 0.8 MiB of memory each).
        if os.getpid() == self.configured_by:
            super().configure_logging()


def run(settings: Settings, log_config: dict[str, Any]) -> bool:
    """Serve until stopped; False when the server never started (a broken app, or a port taken meanwhile)."""
    check_ports(settings)
    app = None
    if settings.workers > 1:
        from ferry.server.worker import create_app_before_fork  # (imports the app: not for other commands)

        app = create_app_before_fork(settings)  # the workers fork from it; None: each builds its own
    config = FerryConfig(
        APP if app is None else app,
        factory=app is None,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        loop="uvloop",
        http=BoundedHttpProtocol,
        ws="none",  # Ferry serves no websockets: importing them costs every worker time and memory
        access_log=False,  # Ferry's own access log (ferry.access) carries the request ID and model
        log_config=log_config,
        log_level=settings.log_level,
        timeout_graceful_shutdown=settings.drain_timeout,
        connection_limits=ConnectionLimits.from_settings(settings),
    )
    try:
        if settings.workers > 1:
            if app is not None:  # the workers fork with it loaded (the pipeline composed): shared, not built in each
                config.load()
            Supervisor(config, sockets=[config.bind_socket()]).run()
            return True
        server = uvicorn.Server(config)
        server.run()
        return server.started
    except KeyboardInterrupt:
        return True
