"""The ``ferry`` command line: each command parses its options and calls one library function."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

import ferry
from ferry.errors import FerryError
from ferry.settings import Settings

app = typer.Typer(
    help="Ferry: from a trained model to a fast, standing prediction service.",
    no_args_is_help=True,
    add_completion=False,
)
examples_app = typer.Typer(help="Build the reference example bundles.", no_args_is_help=True)
app.add_typer(examples_app, name="examples")
console = Console(stderr=True)

DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ferry" / "examples"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ferry {ferry.__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Ferry: from a trained model to a fast, standing prediction service."""


@app.command("build")
def build_command(
    model: Annotated[str, typer.Argument(help="Model file (.skops, .txt, .onnx, .pkl/.joblib) or module.py:Class.")],
    name: Annotated[str, typer.Option(help="Model name.")],
    repo: Annotated[Path, typer.Option(help="Model repository folder.")] = Path("models"),
    version: Annotated[str | None, typer.Option(help="Version (default: next integer).")] = None,
    features: Annotated[str | None, typer.Option(help="Comma-separated feature names, in column order.")] = None,
    labels: Annotated[str | None, typer.Option(help="Comma-separated class labels, by class index.")] = None,
    sample: Annotated[str | None, typer.Option(help="Sample input as JSON.")] = None,
    trusted: Annotated[bool, typer.Option(help="Allow a pickle/joblib artifact (unpickling runs code).")] = False,
) -> None:
    """Bundle a model file into REPO/NAME/VERSION with a manifest and artifact hashes."""
    target: Any = model
    if ".py:" in model:
        target = _import_class(model)
    path = _run(
        lambda: ferry.build(
            target,
            name,
            repo,
            version=version,
            features=features.split(",") if features else None,
            labels=labels.split(",") if labels else None,
            sample_input=json.loads(sample) if sample else None,
            trusted=trusted,
        )
    )
    console.print(f"[green]built[/green] {path}")


@app.command("serve")
def serve_command(
    repo: Annotated[Path, typer.Argument(help="Model repository folder.", envvar="FERRY_REPO")],
    host: Annotated[str, typer.Option(help="Address to bind.", envvar="FERRY_HOST")] = Settings.host,
    port: Annotated[int, typer.Option(help="HTTP port.", envvar="FERRY_PORT")] = Settings.port,
    workers: Annotated[int, typer.Option(help="Worker processes sharing the port.", envvar="FERRY_WORKERS")] = 1,
    trust_pickle: Annotated[
        bool, typer.Option(help="Load pickle/joblib artifacts (runs their code).", envvar="FERRY_TRUST_PICKLE")
    ] = False,
    max_body_bytes: Annotated[
        int, typer.Option(help="Largest request body accepted, in bytes.", envvar="FERRY_MAX_BODY_BYTES")
    ] = Settings.max_body_bytes,
    drain_timeout: Annotated[
        int, typer.Option(help="Seconds to finish in-flight requests on SIGTERM.", envvar="FERRY_DRAIN_TIMEOUT")
    ] = Settings.drain_timeout,
    model_uri: Annotated[
        str, typer.Option(help="Fetch bundles from this URI into REPO before serving.", envvar="FERRY_MODEL_URI")
    ] = "",
    log_level: Annotated[
        str, typer.Option(help="debug, info, warning or error.", envvar="FERRY_LOG_LEVEL")
    ] = Settings.log_level,
) -> None:
    """Serve every model in REPO over HTTP."""
    settings = Settings(
        repo=repo.resolve(),
        host=host,
        port=port,
        workers=workers,
        trust_pickle=trust_pickle,
        max_body_bytes=max_body_bytes,
        drain_timeout=drain_timeout,
        model_uri=model_uri,
        log_level=log_level,
    )
    _serve(settings)


@examples_app.command("build")
def examples_build_command(
    repo: Annotated[Path, typer.Argument(help="Model repository folder to write the examples into.")],
) -> None:
    """Train the reference examples (iris, diabetes, score, reviews) and bundle them into REPO."""
    from ferry.examples import build_examples

    for path in _run(lambda: build_examples(repo)):
        console.print(f"[green]built[/green] {path}")


@app.command("demo")
def demo_command(
    port: Annotated[int, typer.Option(help="HTTP port.")] = Settings.port,
    host: Annotated[str, typer.Option(help="Address to bind.")] = Settings.host,
    cache: Annotated[Path, typer.Option(help="Where the example bundles are kept.")] = DEFAULT_CACHE,
) -> None:
    """Build the reference examples if missing, then serve them all."""
    from ferry.examples import build_examples

    _run(lambda: build_examples(cache))
    console.print(f"serving the examples from {cache} on http://{host}:{port}  (try: curl http://{host}:{port}/models)")
    _serve(Settings(repo=cache.resolve(), host=host, port=port))


def _serve(settings: Settings) -> None:
    import uvicorn

    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.model_uri:
        from ferry.deploy.fetch import fetch_bundles  # model-load mode: bundles arrive at start-up

        _run(lambda: fetch_bundles(settings.model_uri, settings.repo))
    os.environ.update(settings.to_env())
    uvicorn.run(
        "ferry.http.app:create_app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level=settings.log_level,
        timeout_graceful_shutdown=settings.drain_timeout,
    )


def _import_class(spec: str) -> Any:
    import importlib.util

    filename, _, class_name = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location(Path(filename).stem, filename)
    if module_spec is None or module_spec.loader is None:
        raise typer.BadParameter(f"cannot import {filename}")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return getattr(module, class_name)


def _run(action: Any) -> Any:
    """Run a library call; a FerryError is printed plainly and exits 1, never as a traceback."""
    try:
        return action()
    except FerryError as exc:
        console.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(1) from None
