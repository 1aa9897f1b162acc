"""Start the server: uvicorn over the app factory, with the settings passed to every worker as FERRY_*."""

from __future__ import annotations

import logging.config
import os
from typing import Any

from ferry.settings import Settings


def run_server(settings: Settings, log_config: dict[str, Any] | None = None) -> None:
    """Run until stopped; ``settings`` are checked already (``ferry serve`` or ``ferry.cli.entry``)."""
    import uvicorn

    from ferry.observability.logs import logging_config
    from ferry.serving.metrics import multiprocess_folder

    if log_config is None:
        log_config = logging_config(settings.log_level, settings.log_format)  # applied by uvicorn in every worker
        logging.config.dictConfig(log_config)
    os.environ.update(settings.to_env())
    with multiprocess_folder(settings.workers):  # metrics summed over workers; the folder goes at exit
        uvicorn.run(
            "ferry.http.app:create_app_from_env",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            loop="uvloop",
            http="httptools",
            access_log=False,  # Ferry's own access log (ferry.access) carries the request ID and model
            log_config=log_config,
            log_level=settings.log_level,
            timeout_graceful_shutdown=settings.drain_timeout,
            limit_concurrency=settings.max_connections,
        )
