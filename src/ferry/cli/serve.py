"""Start the server: check what must hold before anything binds, then serve with the settings as FERRY_*."""

from __future__ import annotations

import logging.config
import os
import sys
from typing import Any

from ferry.settings import Settings


def check_startup(settings: Settings) -> None:
    """Raise a ``FerryError`` for settings that must stop start-up: tokens asked for but none given, a port in use."""
    from ferry.auth import TokenAuth
    from ferry.server.ports import check_ports

    TokenAuth.from_settings(settings.auth_tokens, settings.auth_tokens_file)  # never run open by mistake
    check_ports(settings)


def run_server(settings: Settings, log_config: dict[str, Any] | None = None) -> None:
    """Run until stopped; ``settings`` are checked already (``ferry serve`` or ``ferry.cli.entry``)."""
    from ferry.observability.logs import logging_config
    from ferry.server import run
    from ferry.serving.metrics import multiprocess_folder

    if log_config is None:
        log_config = logging_config(settings.log_level, settings.log_format)  # applied by uvicorn in every worker
        logging.config.dictConfig(log_config)
    os.environ.update(settings.to_env())
    with multiprocess_folder(settings.workers):  # metrics summed over workers; the folder goes at exit
        started = run(settings, log_config)
    if not started:
        sys.exit(3)  # the app failed to start (uvicorn's status for it); its error is in the log above
