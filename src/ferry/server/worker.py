"""What each worker process serves: the app that ``ferry.server.compose`` composes (one data plane, and HTTP,
gRPC and the probe listener over it), built in the worker or once before ``--workers N`` fork."""

from __future__ import annotations

import gc

from ferry.http.dispatch import FerryApp
from ferry.server.compose import compose
from ferry.settings import Settings


def create_app_from_env() -> FerryApp:
    """uvicorn's factory in every worker: settings arrive as FERRY_* variables."""
    settings = Settings.from_env()
    server = compose(settings)
    server.started = collect_from_now_on  # started: the app, its models loading (loaded with --workers), gRPC
    app = server.app
    # Start-up's imports stay for good: frozen, no collection walks them again (the load's own
    # collection, and every full one while serving, stays short), and a forked worker leaves
    # their pages shared. The collector stays off (as ``ferry.cli.entry`` left it) until the
    # server has started: ``Server.lifespan`` turns it on (``Server.started``).
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
    app.state.plane.metrics.workers.set(0)  # the parent serves nothing; each worker counts itself
    if not settings.max_memory:
        app.state.registry.load_all(before_fork=True)
    collect_from_now_on()
    return app
