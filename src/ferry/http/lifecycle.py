"""Graceful drain on SIGTERM, for Kubernetes rolling updates.

uvicorn already (1) stops accepting connections, (2) lets in-flight requests finish within
``timeout_graceful_shutdown`` and (3) runs the lifespan shutdown. Ferry adds: readiness turns 503
the moment the signal arrives, and the process exits 0 afterwards (uvicorn would re-raise the
signal once it has drained, so that the exit status says "killed by SIGTERM").
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

from ferry.serving.registry import ModelRegistry

logger = logging.getLogger("ferry.lifecycle")


def install_drain_handler(registry: ModelRegistry) -> None:
    """Wrap the server's SIGTERM handler; call from the lifespan, where uvicorn's handler is installed."""
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)
    server: Any = getattr(previous, "__self__", None)  # uvicorn's Server.handle_exit, bound to the server

    def drain(sig: int, frame: FrameType | None) -> None:
        # 1. Readiness turns 503 at once, so load balancers stop sending new work.
        registry.draining = True
        logger.info("SIGTERM: draining; readiness is now 503")
        # 2. Ask the server to stop accepting and finish in-flight requests, without the re-raise.
        if server is not None and hasattr(server, "should_exit"):
            server.should_exit = True
        elif callable(previous):
            previous(sig, frame)

    signal.signal(signal.SIGTERM, drain)
