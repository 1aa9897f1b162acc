"""Typed settings, declared once per command group: the CLI options, the FERRY_* environment and the defaults.

Each field carries its default and help text; the commands' options are generated from the fields
(``ferry.cli.options``) and the environment variables are named from them (``env_name``), so a default or
a name lives here only. Groups by concern: ``Settings`` (the server: ``ferry serve``, its ``panel`` for
server, limits, models and observability), ``GatewaySettings`` (``ferry gateway``),
``LoadTestSettings`` (``ferry loadtest``) and ``BuildSettings`` (``ferry build``). The deployment
commands' groups are declared beside their defaults (``ferry.deploy.spec.DeploySpec``'s), in
``ferry.deploy.options``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

ENV_PREFIX = "FERRY_"
PANELS = ("server", "limits", "models", "observability")


def _setting(default: Any, help: str, panel: str = "server", option: str | tuple[str, ...] = "") -> Any:
    """A field with its help; ``panel`` groups it in ``--help``; ``option`` names its flag (or flags, a short one
    too) when not ``--field-name``."""
    return dataclasses.field(default=default, metadata={"help": help, "panel": panel, "option": option})


setting = _setting  # for a command's group declared beside its defaults (``ferry.deploy.options``)


class SettingsGroup:
    """The environment side of a settings dataclass: ``PREFIX + FIELD_NAME`` for every field."""

    env_prefix: ClassVar[str] = ENV_PREFIX
    env_options: ClassVar[bool] = True  # whether the command's options read the environment too

    @classmethod
    def env_name(cls, name: str) -> str:
        if name not in {f.name for f in dataclasses.fields(cls)}:  # type: ignore[arg-type]
            raise KeyError(f"{cls.__name__} has no setting {name!r}")
        return cls.env_prefix + name.upper()

    def to_env(self, names: tuple[str, ...] | None = None) -> dict[str, str]:
        """The settings (or only ``names``) as variables, so another process rebuilds exactly these.

        An unset optional setting (None) has no variable: its absence is its default.
        """
        fields = dataclasses.fields(self)  # type: ignore[arg-type]
        chosen = [f.name for f in fields] if names is None else names
        values = {name: getattr(self, name) for name in chosen}
        return {self.env_name(name): _text(value) for name, value in values.items() if value is not None}

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Self:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            raw = env.get(cls.env_prefix + f.name.upper())
            if raw is not None:
                values[f.name] = coerce(f.type, raw)
        return cls(**values)


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


@dataclass(frozen=True)
class Settings(SettingsGroup):
    """Every server setting, with its help text; ``ferry serve`` options are generated from these."""

    repo: Path = _setting(Path("models"), "Model repository folder.")
    host: str = _setting("127.0.0.1", "Address to bind.")
    port: int = _setting(8000, "HTTP port.")
    grpc_port: int = _setting(8081, "Open Inference gRPC port (0: off).")
    workers: int = _setting(1, "Worker processes sharing the port.")
    trust_pickle: bool = _setting(False, "Load pickle/joblib artifacts (unpickling runs their code).", panel="models")
    trust_code: bool = _setting(
        False, "Import bundles' Python classes, and load pickles too (both run the bundle's code).", panel="models"
    )
    explain_sampled: str = _setting(
        "",
        "Models (comma-separated) explained by sampling where they have no exact explanation: a Shapley "
        "estimate with its standard error, 1,024 model rows per explained row, against the rows the build kept "
        "from its training data. Off by default.",
        panel="models",
    )
    original_models: bool = _setting(
        False,
        "Load each model's original artifact (and framework) even where its bundle holds a compiled form.",
        panel="models",
    )
    max_body_bytes: int = _setting(8 * 1024 * 1024, "Largest request body accepted (413 past it).", panel="limits")
    body_timeout: float = _setting(
        30.0, "Seconds a client may take to send its request body (408 past it).", panel="limits"
    )
    max_connections: int = _setting(
        2048,
        "Open connections per worker; past it the longest idle or half-sent one is closed, else 503.",
        panel="limits",
    )
    max_inflight_bytes: int = _setting(
        256 * 1024 * 1024,
        "Bytes of request bodies a worker holds at once; past it a request with a body gets 503 (0: no bound).",
        panel="limits",
    )
    max_header_bytes: int = _setting(64 * 1024, "Largest request line plus headers (431 past it).", panel="limits")
    max_headers: int = _setting(100, "Most header lines in one request (431 past it).", panel="limits")
    header_timeout: float = _setting(
        10.0, "Seconds a client may take to send a request's line and headers (408).", panel="limits"
    )
    body_read_timeout: float = _setting(
        10.0,
        "Seconds in which a request body must keep arriving at --min-body-rate (408), as nginx's client_body_timeout.",
        panel="limits",
    )
    min_body_rate: int = _setting(
        1024,
        "Bytes per second a request body must average over each --body-read-timeout (0: at least one byte).",
        panel="limits",
    )
    connection_max_age: float = _setting(
        5.0,
        "Seconds a kept-alive connection lives; then Connection: close, so clients rebalance (0: forever).",
        panel="limits",
    )
    probe_port: int = _setting(8082, "Port answering /health, /ready and /metrics apart from the load (0: off).")
    request_timeout: float = _setting(
        30.0, "Default deadline of a prediction, in seconds (504 past it).", panel="limits"
    )
    max_queue: int = _setting(256, "Requests that may wait per model before new ones get 503.", panel="limits")
    max_rows: int = _setting(
        10_000, "Most rows (records, images, texts) in one request (413 past it; 0: no bound).", panel="limits"
    )
    max_pixels: int = _setting(
        100_000_000,
        "Most pixels one request's images may decode to, all together, read from their headers before any is "
        "decoded (413 past it; 0: no bound).",
        panel="limits",
    )
    drain_timeout: int = _setting(30, "Seconds to finish in-flight requests on SIGTERM.", panel="limits")
    model_threads: int = _setting(1, "Threads for model compute off the event loop.", panel="limits")
    trial_timeout: float = _setting(
        120.0,
        "Seconds a model in a native format (LightGBM, XGBoost, CatBoost, ONNX, an uncompiled scikit-learn file) "
        "may take to load and answer its sample in a trial process first; a crash or hang there fails it alone "
        "(0: no trial).",
        panel="models",
    )
    admin: bool = _setting(
        False,
        "Enable POST /models/{name}/load, /unload and /reload (needs auth tokens, or the next flag).",
        panel="models",
    )
    admin_unauthenticated: bool = _setting(
        False,
        "Allow --admin without auth tokens: anyone who reaches the port may load and unload models.",
        panel="models",
    )
    watch: bool = _setting(False, "Load new versions copied into the repository while serving.", panel="models")
    auth_tokens: str = _setting("", "Comma-separated bearer tokens / API keys required on predict and admin routes.")
    auth_tokens_file: str = _setting("", "File with one accepted token per line.")
    model_uri: str = _setting("", "Fetch bundles from this URI into the repository before serving.", panel="models")
    log_level: str = _setting("info", "debug, info, warning or error.", panel="observability")
    log_format: str = _setting("json", "Log lines as json (one object per line) or text.", panel="observability")
    access_log: bool = _setting(
        True, "Log one line per request: method, path, status, latency, bytes, model, ID.", panel="observability"
    )
    prediction_log: str = _setting(
        "", "File (or - for stdout) for the sampled predictions of models that opt in.", panel="observability"
    )
    prediction_log_max_bytes: int = _setting(
        64 * 1024 * 1024, "Rotate the prediction log file past this size.", panel="observability"
    )
    tracing: str = _setting(
        "",
        "OpenTelemetry traces: otlp (OTEL_EXPORTER_OTLP_* variables), console, or a file path for JSON lines.",
        panel="observability",
    )
    console: bool = _setting(True, "Serve the web console at / and live stats at /stats.", panel="observability")
    routes: str = _setting(
        "", "Routes file (routes.yaml): route requests between the models by header, query or body.", panel="models"
    )
    max_memory: str = _setting(
        "",
        "Memory budget for loaded models, like 1GiB or 512MiB: the index is verified at start, models load on "
        "demand and the least recently used are unloaded past it (empty: load every model at start).",
        panel="models",
    )
    preload: bool = _setting(
        True,
        "With --max-memory: load models at start while they fit (--no-preload: each on its first request).",
        panel="models",
    )
    name: str = _setting(
        "",
        "The model's name, serving a KServe or MLflow model folder as it is (default: the folder's name).",
        panel="models",
    )


@dataclass(frozen=True)
class GatewaySettings(SettingsGroup):
    """``ferry gateway``: the routes file as a reverse proxy in front of model services."""

    env_prefix: ClassVar[str] = ENV_PREFIX + "GATEWAY_"

    host: str = _setting(Settings.host, "Address to bind.")
    port: int = _setting(8080, "HTTP port.")
    health_interval: float = _setting(5.0, "Seconds between upstream health checks.")
    max_body_bytes: int = _setting(Settings.max_body_bytes, "Largest request body accepted (413 past it).")
    max_connections: int = _setting(256, "Most open connections to the upstreams, all together.")
    max_client_connections: int = _setting(
        4096,
        "Open client connections; past it the longest idle or half-sent one is closed, else the slowest body, "
        "else 503 (kept below the file-descriptor limit).",
    )
    header_timeout: float = _setting(Settings.header_timeout, "Seconds a client may take to send a request head (408).")
    body_read_timeout: float = _setting(
        Settings.body_read_timeout, "Seconds in which a request body must keep arriving at --min-body-rate (408)."
    )
    min_body_rate: int = _setting(
        Settings.min_body_rate, "Bytes per second a request body must average over each --body-read-timeout."
    )
    tracing: str = _setting(
        "", "OpenTelemetry traces: otlp, console or a JSON-lines file (off: traceparent passes as is)."
    )


@dataclass(frozen=True)
class LoadTestSettings(SettingsGroup):
    """``ferry loadtest``: what to send, how hard and for how long, and what the run must meet."""

    env_prefix: ClassVar[str] = ENV_PREFIX + "LOADTEST_"

    url: str = _setting("", "Base URL of the service, e.g. http://127.0.0.1:8000")
    model: str | None = _setting(None, "Model name (default: the only model served).")
    rate: float | None = _setting(None, "Open loop: requests per second on a fixed schedule.")
    concurrency: int | None = _setting(None, "Closed loop: this many concurrent users.")
    duration: str = _setting("30s", "How long: 30s, 2m, 500ms.")
    ramp: str | None = _setting(None, "Open-loop ramp FROM:TO:DURATION[,...], e.g. 100:2000:60s.")
    data: str | None = _setting(None, "JSONL/CSV file, image folder, 'sample' or 'generated' (default: sample).")
    protocol: str = _setting("native", "native, v2, v1, seldon, or grpc (OIP ModelInfer).")
    route: str | None = _setting(None, "Any route instead, e.g. 'POST /predict' or 'GET /prediction/?f=0.05'.")
    body: str | None = _setting(None, "--route: the JSON body to send (else --data, else the sample).")
    grpc_target: str | None = _setting(
        None, f"--protocol grpc: HOST:PORT of the gRPC server (default: URL's host, {Settings.grpc_port})."
    )
    processes: int = _setting(1, "Generator processes sharing the load.")
    timeout: str = _setting("10s", "Per-request timeout.")
    connections: int = _setting(1000, "Most open connections (per run).")
    sla: str | None = _setting(None, "Gate, e.g. 'p99<50ms,errors<0.1%'; exit 1 when it fails.")
    json_path: Path | None = _setting(None, "Write the full results as JSON.", option="--json")
    report: Path | None = _setting(None, "Write an HTML report with charts, and the charts as a PNG beside it.")
    find_max: bool = _setting(False, "Search the highest rate that meets --sla.")
    step_duration: str = _setting("10s", "--find-max: length of each step.")
    max_rate: float = _setting(1_000_000.0, "--find-max: stop searching at this rate.")


@dataclass(frozen=True)
class BuildSettings(SettingsGroup):
    """``ferry build``: what to name the bundle, where to put it, and what to check and declare in it.

    Options only: a build is one command, not a process configured from its environment."""

    env_options: ClassVar[bool] = False

    name: str | None = _setting(
        None, "Model name (an MLServer repository names its own; an MLflow or KServe folder's name)."
    )
    repo: Path = _setting(Settings.repo, "Model repository folder.")
    version: str | None = _setting(None, "Version (default: next integer).")
    features: str | None = _setting(
        None,
        "Comma-separated feature names in column order, each NAME or NAME:TYPE (string, int, float, bool; "
        "a trailing ? allows a missing value: age:float?).",
    )
    labels: str | None = _setting(None, "Comma-separated class labels, by class index.")
    sample: str | None = _setting(None, "Sample input as JSON.")
    expect: str | None = _setting(None, "What --sample must answer (JSON, or a bare label); the build fails otherwise.")
    route: list[str] | None = _setting(
        None, "A client API to answer: 'POST /predict', or a YAML mapping (full form); repeatable."
    )
    trusted: bool = _setting(False, "Allow a pickle/joblib artifact (unpickling runs code).")
    training_data: Path | None = _setting(
        None,
        "CSV (a header row naming the columns) or Parquet file of training rows: statistics for drift and "
        "explanations, and the rows --explain-sampled explains against.",
    )
    include: list[Path] | None = _setting(
        None, "A file or folder a Python class needs (its modules, fitted files); repeatable."
    )
    requirements: Path | None = _setting(
        None,
        "pip requirements file of the model (a Python class's, a pipeline step's package), installed by ferry "
        "containerize.",
    )
    text: str | None = _setting(None, "The model takes text: the JSON field that carries it (e.g. text).")


def coerce(type_name: Any, raw: str) -> Any:
    name = type_name if isinstance(type_name, str) else type_name.__name__
    name = name.removesuffix(" | None")
    if name == "bool":
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if name == "int":
        return int(raw)
    if name == "float":
        return float(raw)
    if name == "Path":
        return Path(raw)
    return raw
