"""Start the server: check what must hold before anything binds, then serve with the settings as FERRY_*."""

from __future__ import annotations

import logging.config
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from ferry.cli import FAILURE
from ferry.settings import Settings

if TYPE_CHECKING:
    from ferry.bundle.trust import Trust

REPOSITORY_LAYOUT = (
    "a model repository holds REPO/<name>/<version>/ferry.yaml; "
    "make one with: ferry build MODEL --name NAME --repo REPO"
)

LAYOUT_NAMES = {"mlserver": "an MLServer repository", "mlflow": "an MLflow model folder", "kserve": "a KServe folder"}


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
    from ferry.bundle.layouts import layout_of

    layout = layout_of(repo)
    if layout is not None:  # ferry serve converts it first; ferry verify takes bundles
        return f"{repo} is {LAYOUT_NAMES[layout]}: ferry serve converts it, ferry build {repo} makes bundles of it"
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


def serve_layout(settings: Settings) -> Settings:
    """An MLServer repository, an MLflow model folder or a KServe storage folder, served as it is: its models
    built into hashed bundles in a private folder, which is served instead.

    A model Ferry cannot run (an implementation it does not know, a pickle without ``--trust-pickle`` or
    ``--trust-code``, a file it cannot read) is recorded with its reason: it shows FAILED in ``/models`` and
    ``/ready`` while the others serve, as a bundle that fails to load does.
    """
    import atexit
    import dataclasses
    import shutil
    import tempfile

    from ferry.bundle.layouts import layout_of
    from ferry.bundle.trust import SERVER_FLAG, Trust

    layout = layout_of(settings.repo)
    if layout is None:
        return settings
    target = Path(tempfile.mkdtemp(prefix=f"ferry-{layout}-"))
    atexit.register(shutil.rmtree, target, True)  # the server (and its workers) is done with it at exit
    trust = Trust(settings.trust_pickle or settings.trust_code, SERVER_FLAG)
    code = Trust(settings.trust_code, "--trust-code")  # an MLflow pyfunc model is code, not only a pickle
    convert_layout(settings.repo, target, trust, settings.name or None, record=True, code_trust=code)
    return dataclasses.replace(settings, repo=target)


def convert_layout(
    source: Path, repo: Path, trust: Trust, name: str | None, record: bool, code_trust: Trust | None = None
) -> list[Converted]:
    """Build every model of the layout at ``source`` into ``repo``; one that cannot be built does not stop the others.

    ``code_trust`` (else ``trust``) is what an MLflow pyfunc model, Python code, needs to be built.

    Each model's name, and its bundle's path or why it could not be built. With ``record``, that reason is kept in
    ``repo`` as a version that fails to load with it (``ferry.bundle.repository.record_unservable``).
    """
    import logging

    from ferry.builder import build
    from ferry.bundle.artifacts import sniff
    from ferry.bundle.layouts import layout_of, source_models
    from ferry.bundle.mlflow import check_pyfunc_trust, mlflow_model_file, pyfunc_flavor
    from ferry.bundle.repository import record_unservable
    from ferry.bundle.trust import check_trusted
    from ferry.errors import FerryError, ManifestError, UsageError

    layout = layout_of(source)
    if layout is None:
        raise UsageError(f"{source.name}: not an MLServer repository, an MLflow model folder or a KServe folder")
    done = []
    for model in source_models(source, layout, name):
        try:
            if model.problem is not None:
                raise ManifestError(model.problem)
            assert model.source is not None
            if model.source.is_dir() and pyfunc_flavor(model.source) is not None:
                check_pyfunc_trust(model.source, code_trust or trust, model.name)  # before any of it is read
            else:
                file = mlflow_model_file(model.source) if model.source.is_dir() else model.source
                if sniff(file) in ("skops", "pickle", "unknown"):  # the one policy, naming the converter's flag
                    check_trusted(file, trust, f"{model.name}: {file.name}")
            path = build(
                model.source, model.name, repo, version=model.version, trusted=trust.granted, metadata=model.metadata
            )
            done.append(Converted(model.name, path, None))
        except Exception as exc:  # one model Ferry cannot run must not stop the others
            reason = exc.message if isinstance(exc, FerryError) else f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, FerryError):
                logging.getLogger("ferry.cli").exception("model %s: cannot be built from %s", model.name, source)
            if record:
                record_unservable(repo, model.name, model.version or "1", reason)
            done.append(Converted(model.name, None, reason))
    return done


class Converted(NamedTuple):
    """One model of a converted layout: its bundle, or why there is none."""

    name: str
    path: Path | None
    problem: str | None


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
    "encodings.idna",  # (binding a listener by host name imports it: once here, not in each worker)
)


def _fork_workers_after_imports(grpc: bool) -> None:
    """Workers fork from a parent that has imported the server, instead of each importing it anew.

    uvicorn spawns its workers: every one re-imports numpy, starlette and Ferry and keeps a private copy
    (``--workers 4`` cost 4.8x the memory, PSS, of one worker). Forked after the imports, the workers
    share those pages copy-on-write; ``gc.freeze`` keeps the collector from writing to them. The models
    are loaded by the parent too (``ferry.server.worker``), except those whose load or first answer
    starts threads (LightGBM's and XGBoost's OpenMP pools do not survive a fork): each worker loads its
    own copy of those. The parent starts no threads and no event loop before forking. With gRPC on,
    its server module (protobuf's messages, hpack) is imported here too; each worker starts its own server.
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
