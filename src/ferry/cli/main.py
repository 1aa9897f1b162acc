"""The ``ferry`` command line: each command parses its options and calls one library function."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

import ferry
from ferry.cli.errors import FerryTyper
from ferry.cli.errors import run as _run
from ferry.cli.options import check_tracing, settings_command
from ferry.settings import BuildSettings, Settings

app = FerryTyper(
    help="Ferry: from a trained model to a fast, standing prediction service.",
    epilog="Docs: docs/index.md (the manual, one page per topic; each command's help names its page).",
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


def build_command(
    model: Annotated[
        list[str],
        typer.Argument(
            help="Model file(s): .skops, .pkl/.joblib, LightGBM .txt, XGBoost .json/.ubj, CatBoost .cbm, .onnx; "
            "several compose, in order, into one pipeline. Or module.py:Class, or a folder as MLServer, MLflow "
            "or KServe keep models."
        ),
    ],
    settings: BuildSettings,
) -> None:
    """Bundle a model into REPO/NAME/VERSION with a manifest and artifact hashes."""
    from ferry.bundle.layouts import layout_of, source_models

    s = settings
    name, repo, trusted, text = s.name, s.repo, s.trusted, s.text

    layout = layout_of(Path(model[0])) if len(model) == 1 else None
    if layout == "mlserver":  # every model of the repository, each named and versioned as MLServer has it
        _convert_layout(Path(model[0]), repo, name, trusted)
        return
    metadata = None
    if layout is not None:  # an MLflow or KServe folder: its one model, named after the folder unless --name
        (found,) = source_models(Path(model[0]), layout, name)
        if found.problem is not None or found.source is None:
            from ferry.cli.errors import fail

            fail(found.problem or f"{model[0]}: no model in the folder")
        model, name, metadata = [str(found.source)], found.name, found.metadata
    if name is None:
        raise typer.BadParameter("a model needs a name", param_hint="--name")
    path = _run(
        lambda: ferry.build(
            model,  # files, or module.py:Class (imported only after the options are checked)
            name,
            repo,
            version=s.version,
            features=s.features.split(",") if s.features else None,
            labels=s.labels.split(",") if s.labels else None,
            sample_input=_json_option(s.sample, "--sample") if s.sample else None,
            expected_output=_expected(s.expect),
            routes=list(s.route or []),
            trusted=trusted,
            training_data=_training_rows(s.training_data) if s.training_data else None,
            include=list(s.include or []),
            requirements=s.requirements,
            input_schema={"kind": "text", "field": text} if text else None,
            metadata=metadata,
        )
    )
    console.print(f"[green]built[/green] {path}")
    from ferry.bundle.manifest import read_manifest

    compiled = read_manifest(path).metadata.get("compiled")
    if compiled:  # whether it serves without its framework, and if not, why
        console.print(f"compiled form: {compiled}")


def _training_rows(path: Path) -> Any:
    """``--training-data``: a pandas DataFrame of the file's rows, Parquet by its magic bytes, else CSV."""
    from ferry.errors import ManifestError

    try:
        import pandas as pd  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        raise ManifestError("--training-data reads CSV and Parquet with pandas: pip install pandas") from None
    try:
        with path.open("rb") as fh:
            parquet = fh.read(4) == b"PAR1"
        return pd.read_parquet(path) if parquet else pd.read_csv(path)
    except (OSError, ValueError, ImportError) as exc:
        raise ManifestError(f"--training-data {path}: {exc}") from None


def _convert_layout(source: Path, repo: Path, name: str | None, trusted: bool) -> None:
    """Every model of an MLServer repository, built as a hashed bundle named and versioned as MLServer has it; one
    that cannot be built is reported, and the command fails once the others are built."""
    from ferry.bundle.trust import BUILD_FLAG, Trust
    from ferry.cli.errors import fail
    from ferry.cli.serve import convert_layout

    failed = []
    for converted in _run(lambda: convert_layout(source, repo, Trust(trusted, BUILD_FLAG), name, record=False)):
        if converted.path is not None:
            console.print(f"[green]built[/green] {converted.path}")
        else:  # each reported on the one error line, once the others are built
            failed.append(f"{converted.name}: {converted.problem}")
    if failed:
        fail(f"{len(failed)} model(s) not built: " + "; ".join(failed))


def _json_option(text: str, option: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"not valid JSON: {exc}", param_hint=option) from None


def _expected(text: str | None) -> Any:
    """``--expect setosa`` is the label itself; anything that parses as JSON is that JSON value."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def serve(settings: Settings) -> None:
    """Serve every model in REPO over HTTP."""
    _serve(dataclasses.replace(settings, repo=settings.repo.resolve()))


app.command("build")(settings_command(build_command, BuildSettings))
app.command("serve")(settings_command(serve, Settings, arguments=("repo",), panels=True))


def verify(
    allow_requirement_options: Annotated[
        bool,
        typer.Option(help="Accept bundle requirement lines that are not package specifiers (pip options, URLs)."),
    ] = False,
    *,
    settings: Settings,
) -> None:
    """Load every bundle in REPO as the server would (hashes, framework, warm-up); exit 1 if any fails.

    ``ferry containerize`` ends the image build with it, so a missing dependency fails the build.
    A pickle or class that only --trust-pickle / --trust-code may load is reported, not failed: its
    framework is imported. A bundle's requirements must be package specifiers, as containerize installs them.
    """
    from ferry.bundle import read_manifest
    from ferry.bundle.requirements import bundle_requirements
    from ferry.cli.errors import fail
    from ferry.cli.serve import repository_problem
    from ferry.errors import FerryError
    from ferry.protocol.native import native_warm_up
    from ferry.runtimes import runtime_class
    from ferry.serving.registry import ModelRegistry, ModelState

    repo = settings.repo.resolve()
    problem = repository_problem(dataclasses.replace(settings, repo=repo))
    if problem:
        fail(problem)
    registry = ModelRegistry(
        repo,
        trust_pickle=settings.trust_pickle,
        warmup=native_warm_up(),
        trust_code=settings.trust_code,
        original=settings.original_models,
    )
    failed = []
    for handle in registry.handles():
        registry.load(handle)
        label = f"{handle.name}:{handle.version}"
        try:
            bundle_requirements(handle.path, read_manifest(handle.path), allow_requirement_options)
        except FerryError as exc:
            if handle.state is ModelState.READY:  # else its load error is the one reported
                failed.append(f"{label}: {exc.message}")
                console.print(f"[red]not ok[/red] {escape(label)}: {escape(exc.message)}", soft_wrap=True)
                continue
        if handle.state is ModelState.READY:
            console.print(f"[green]ok[/green] {label}", soft_wrap=True)
            continue
        needs = next((flag for flag in ("--trust-pickle", "--trust-code") if flag in (handle.error or "")), None)
        if needs:  # only the operator's server may unpickle or import it
            runtime_class(read_manifest(handle.path).runtime)  # but its framework must import here
            console.print(
                f"[yellow]needs {needs}[/yellow] {escape(label)}: {escape(handle.error or '')}", soft_wrap=True
            )
            continue
        failed.append(f"{label}: {handle.error}")
    if failed:
        fail(f"{len(failed)} bundle(s) do not load: " + "; ".join(failed))


app.command("verify")(
    settings_command(
        verify, Settings, arguments=("repo",), only=("repo", "trust_pickle", "trust_code", "original_models")
    )
)


@examples_app.command("build")
def examples_build_command(
    repo: Annotated[Path, typer.Argument(help="Model repository folder to write the examples into.")],
    images: Annotated[bool, typer.Option(help="Build the two image classifiers (general, plants) instead.")] = False,
) -> None:
    """Train the reference examples (iris, diabetes, score, reviews) and bundle them into REPO."""
    from ferry.examples import build_examples
    from ferry.examples.build import IMAGE_EXAMPLES

    names = list(IMAGE_EXAMPLES) if images else None
    for path in _run(lambda: build_examples(repo, names)):
        console.print(f"[green]built[/green] {path}")


# Where demo listens: the ports of `ferry serve`, so one that is taken (named in the error) can be moved.
DEMO_SETTINGS = ("host", "port", "grpc_port", "probe_port")


def demo(
    cache: Annotated[Path, typer.Option(help="Where the example bundles are kept.")] = DEFAULT_CACHE,
    routing: Annotated[
        bool, typer.Option(help="Route by the reference routes file: `target: mountain` to plants, else general.")
    ] = False,
    *,
    settings: Settings,
) -> None:
    """Build the reference examples if missing, then serve them all."""
    from importlib import resources

    from ferry.examples import build_examples

    url = f"http://{settings.host}:{settings.port}"
    routes = ""
    if routing:  # the image-classifier reference: its two models, routed by the `target` header
        from ferry.examples.build import IMAGE_EXAMPLES

        cache = cache / "images"
        _run(lambda: build_examples(cache, list(IMAGE_EXAMPLES)))
        routes = str(resources.files("ferry.examples").joinpath("data", "routes.yaml"))
        console.print(f"routing by {routes}; try: curl -H 'target: mountain' {url}/predict/test")
    else:
        _run(lambda: build_examples(cache))
    console.print(f"serving the examples from {cache} on {url}  (try: curl {url}/models)")
    # The operator runs our own examples: the `score` identity class is Ferry's code, so demo trusts it.
    _serve(dataclasses.replace(settings, repo=cache.resolve(), routes=routes, trust_code=True))


app.command("demo")(settings_command(demo, Settings, only=DEMO_SETTINGS))


def _serve(settings: Settings) -> None:
    import logging.config

    from ferry.cli.errors import fail
    from ferry.cli.serve import check_startup, repository_problem, run_server, serve_layout
    from ferry.observability.logs import LOG_FORMATS, logging_config

    if settings.log_format not in LOG_FORMATS:
        raise typer.BadParameter(f"expected one of {', '.join(LOG_FORMATS)}", param_hint="--log-format")
    log_config = logging_config(settings.log_level, settings.log_format)  # applied by uvicorn in every worker too
    logging.config.dictConfig(log_config)
    if settings.tracing:
        check_tracing(settings.tracing)
    if settings.routes:
        from ferry.routing.spec import load_routes

        _run(lambda: load_routes(settings.routes))  # a bad routes file: the rule and field, not a traceback
    if not settings.model_uri:  # an MLServer repository, an MLflow or a KServe folder: converted, then served
        settings = _run(lambda: serve_layout(settings))
    problem = repository_problem(settings)  # a typo'd or empty path: named, with what a repository looks like
    if problem:
        fail(problem)
    _run(lambda: check_startup(settings))  # tokens asked for but none given, or a port in use: one line, exit 1
    if settings.model_uri:
        from ferry.deploy.fetch import fetch_bundles  # model-load mode: bundles arrive at start-up

        _run(lambda: fetch_bundles(settings.model_uri, settings.repo))
    run_server(settings, log_config)


def _register_commands() -> None:
    """Add the other command groups, except when the process is ``ferry serve``.

    Their modules import rich's live tables, urllib and the deploy renderers: tens of milliseconds of a
    server's ready time that ``serve`` never uses (``ferry --help`` still lists every command).
    """
    if sys.argv[1:2] == ["serve"]:
        return
    from ferry.cli import deploy, loadtest, monitor, routing

    loadtest.register(app)  # loadtest, check, plan
    deploy.register(app)  # containerize, compose, k8s, fetch, deploy, ...
    monitor.register(app)  # monitor
    routing.register(app)  # gateway


# The manual's page for each command, named at the end of its help (no site is hosted: a path in the repository).
DOCS_PAGES = {
    "build": "bring-your-own-model.md",
    "verify": "bring-your-own-model.md",
    "serve": "serving.md",
    "demo": "serving.md",
    "examples": "serving.md",
    "gateway": "routing.md",
    "loadtest": "load-testing.md",
    "check": "load-testing.md",
    "plan": "load-testing.md",
    "monitor": "observability.md",
    **dict.fromkeys(("containerize", "compose", "k8s", "fetch", "index", "deploy", "undeploy", "status"), "deploy.md"),
}


def _link_docs() -> None:
    """Name each registered command's page of the manual at the end of its help."""
    for command in app.registered_commands:
        if command.name in DOCS_PAGES:
            command.epilog = f"Docs: docs/{DOCS_PAGES[command.name]}"
    for group in app.registered_groups:
        if group.name in DOCS_PAGES:
            group.epilog = f"Docs: docs/{DOCS_PAGES[group.name]}"


_register_commands()
_link_docs()
