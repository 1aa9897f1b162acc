"""Start the server: check what must hold before anything binds, then serve with the settings as FERRY_*."""

from __future__ import annotations

import logging.config
import os
import sys
from typing import Any

from ferry.cli import FAILURE
from ferry.settings import Settings

REPOSITORY_LAYOUT = (
    "a model repository holds REPO/<name>/<version>/ferry.yaml; "
    "make one with: ferry build MODEL --name NAME --repo REPO"
)


def repository_problem(settings: Settings) -> str | None:
    """Why ``settings.repo`` cannot be served, naming the path; None when it can.

    A typo'd path, or one with no model, must not start an empty server in silence. A bundle folder or
    a model folder given instead of its repository gets the command that serves it. With ``--watch`` or
    ``--admin`` an existing empty folder may start empty (models arrive later); with ``--model-uri``
    the bundles are fetched at start-up.
    """
    from ferry.bundle.manifest import MANIFEST_FILE
    from ferry.bundle.repository import scan_repository

    repo = settings.repo
    if settings.model_uri:
        return None
    if not repo.is_dir():
        return f"{repo}: {'not a folder' if repo.exists() else 'no such folder'}; {REPOSITORY_LAYOUT}"
    if (repo / MANIFEST_FILE).is_file():
        return (
            f"{repo} is one bundle (a model version), not a repository: serve it with ferry serve {repo.parent.parent}"
        )
    from ferry.bundle.mlserver import is_mlserver_repository

    if is_mlserver_repository(repo) and not scan_repository(repo):
        return f"{repo} is an MLServer repository: converted into bundles when served"  # the typer path does it
    if any((child / MANIFEST_FILE).is_file() for child in repo.iterdir() if child.is_dir()):
        return f"{repo} holds the versions of one model, not a repository: serve it with ferry serve {repo.parent}"
    if scan_repository(repo) or settings.watch or settings.admin:
        return None
    return f"{repo}: no model bundles in it; {REPOSITORY_LAYOUT}"


def check_startup(settings: Settings) -> None:
    """Raise a ``FerryError`` for settings that must stop start-up: tokens asked for but none given, ``--admin``
    open to anyone without ``--admin-unauthenticated``, a port in use."""
    from ferry.auth import TokenAuth
    from ferry.errors import UsageError
    from ferry.server.ports import check_ports

    if settings.max_memory:
        from ferry.serving.budget import parse_size

        try:
            parse_size(settings.max_memory)
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    auth = TokenAuth.from_settings(settings.auth_tokens, settings.auth_tokens_file)  # never run open by mistake
    if settings.admin and auth is None and not settings.admin_unauthenticated:
        raise UsageError(
            "--admin without --auth-tokens or --auth-tokens-file lets anyone who reaches the port load, unload "
            "and reload models; give tokens, or add --admin-unauthenticated to run it open on purpose"
        )
    check_ports(settings)


def serve_mlserver_repository(settings: Settings) -> Settings:
    """An MLServer repository, served as it is: its models built into hashed bundles in a private folder.

    Pickles load only with the operator's ``--trust-pickle`` (or ``--trust-code``), as in any Ferry repository.
    """
    import atexit
    import dataclasses
    import shutil
    import tempfile
    from pathlib import Path

    from ferry.builder import build
    from ferry.bundle.mlserver import SOURCE, mlserver_models
    from ferry.bundle.trust import SERVER_FLAG, Trust, check_trusted

    target = Path(tempfile.mkdtemp(prefix="ferry-mlserver-"))
    atexit.register(shutil.rmtree, target, True)  # the server (and its workers) is done with it at exit
    trust = Trust(settings.trust_pickle or settings.trust_code, SERVER_FLAG)
    for name, version, file in mlserver_models(settings.repo):
        check_trusted(file, trust, f"{name}: {file.name}")  # the one loading policy, naming the server's flag
        build(file, name, target, version=version, trusted=trust.granted, metadata={"source": SOURCE})
    return dataclasses.replace(settings, repo=target)


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
        if settings.workers > 1:  # after the folder is named: prometheus_client reads it when imported
            _fork_workers_after_imports(grpc=bool(settings.grpc_port))
        started = run(settings, log_config)
    if not started:
        sys.exit(FAILURE)  # the app failed to start; its error is in the log above


# What a worker imports to serve compiled models (found with python -X importtime on a worker).
_WORKER_MODULES = (
    "ferry.server.worker",
    "ferry.http.console",
    "ferry.observability.stats",
    "ferry.runtimes.compiled",
    "ferry.runtimes.textfeatures",
    "prometheus_client.multiprocess",
    "uvloop",
)


def _fork_workers_after_imports(grpc: bool) -> None:
    """Workers fork from a parent that has imported the server, instead of each importing it anew.

    uvicorn spawns its workers: every one re-imports numpy, starlette and Ferry and keeps a private copy
    (``--workers 4`` cost 4.8x the memory, PSS, of one worker). Forked after the imports, the workers
    share those pages copy-on-write; ``gc.freeze`` keeps the collector from writing to them. Models
    still load in each worker; their compiled arrays are memory-mapped, so shared by the page cache.
    The parent starts no threads and no event loop before forking. With gRPC on, grpcio is imported here
    too (only imported: its server, and gRPC's threads, start in each worker): imported in each worker,
    it cost ~9 MiB of private memory per worker.
    """
    import gc
    import importlib
    import multiprocessing

    import uvicorn._subprocess
    from prometheus_client import values

    for module in (*_WORKER_MODULES, "ferry.grpc.server") if grpc else _WORKER_MODULES:  # (the workers inherit it)
        importlib.import_module(module)
    # prometheus_client picks its value class (multiprocess or not) when first imported, which here
    # was before the metrics folder was named; pick again, as a spawned worker importing it would.
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]

    if hasattr(uvicorn._subprocess, "spawn"):  # the context uvicorn's supervisor starts workers with
        uvicorn._subprocess.spawn = multiprocessing.get_context("fork")  # type: ignore[assignment]
    gc.freeze()  # (no collection first: what start-up left unreachable is a few hundred objects)
