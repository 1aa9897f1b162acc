"""Typed server settings, declared once: the CLI fills them, the environment (FERRY_*) carries them to workers."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV_PREFIX = "FERRY_"


def _setting(default: Any, help: str) -> Any:
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Settings:
    """Every server setting, with its help text; ``ferry serve`` options are generated from these."""

    repo: Path = _setting(Path("models"), "Model repository folder.")
    host: str = _setting("127.0.0.1", "Address to bind.")
    port: int = _setting(8000, "HTTP port.")
    grpc_port: int = _setting(8081, "Open Inference gRPC port (0: off).")
    workers: int = _setting(1, "Worker processes sharing the port.")
    trust_pickle: bool = _setting(False, "Load pickle/joblib artifacts (unpickling runs their code).")
    trust_code: bool = _setting(
        False, "Import bundles' Python classes, and load pickles too (both run the bundle's code)."
    )
    original_models: bool = _setting(
        False, "Load each model's original artifact (and framework) even where its bundle holds a compiled form."
    )
    max_body_bytes: int = _setting(8 * 1024 * 1024, "Largest request body accepted (413 past it).")
    body_timeout: float = _setting(30.0, "Seconds a client may take to send its request body (408 past it).")
    max_connections: int = _setting(
        2048, "Open connections per worker; past it the longest idle or half-sent one is closed, else 503."
    )
    max_header_bytes: int = _setting(64 * 1024, "Largest request line plus headers (431 past it).")
    max_headers: int = _setting(100, "Most header lines in one request (431 past it).")
    header_timeout: float = _setting(10.0, "Seconds a client may take to send a request's line and headers (408).")
    connection_max_age: float = _setting(
        5.0, "Seconds a kept-alive connection lives; then Connection: close, so clients rebalance (0: forever)."
    )
    probe_port: int = _setting(8082, "Port answering /health, /ready and /metrics apart from the load (0: off).")
    request_timeout: float = _setting(30.0, "Default deadline of a prediction, in seconds (504 past it).")
    max_queue: int = _setting(256, "Requests that may wait per model before new ones get 503.")
    drain_timeout: int = _setting(30, "Seconds to finish in-flight requests on SIGTERM.")
    model_threads: int = _setting(1, "Threads for model compute off the event loop.")
    admin: bool = _setting(False, "Enable POST /models/{name}/load, /unload and /reload.")
    watch: bool = _setting(False, "Load new versions copied into the repository while serving.")
    auth_tokens: str = _setting("", "Comma-separated bearer tokens / API keys required on predict and admin routes.")
    auth_tokens_file: str = _setting("", "File with one accepted token per line.")
    model_uri: str = _setting("", "Fetch bundles from this URI into the repository before serving.")
    log_level: str = _setting("info", "debug, info, warning or error.")
    log_format: str = _setting("json", "Log lines as json (one object per line) or text.")
    access_log: bool = _setting(True, "Log one line per request: method, path, status, latency, bytes, model, ID.")
    prediction_log: str = _setting("", "File (or - for stdout) for the sampled predictions of models that opt in.")
    prediction_log_max_bytes: int = _setting(64 * 1024 * 1024, "Rotate the prediction log file past this size.")
    tracing: str = _setting(
        "", "OpenTelemetry traces: otlp (OTEL_EXPORTER_OTLP_* variables), console, or a file path for JSON lines."
    )
    console: bool = _setting(True, "Serve the web console at / and live stats at /stats.")
    routes: str = _setting("", "Routes file (routes.yaml): route requests between the models by header, query or body.")
    max_memory: str = _setting(
        "",
        "Memory budget for loaded models, like 1GiB or 512MiB: the index is verified at start, models load on "
        "demand and the least recently used are unloaded past it (empty: load every model at start).",
    )
    preload: bool = _setting(
        True, "With --max-memory: load models at start while they fit (--no-preload: each on its first request)."
    )

    def to_env(self) -> dict[str, str]:
        """The settings as FERRY_* variables, so worker processes rebuild exactly these."""
        return {ENV_PREFIX + f.name.upper(): str(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = coerce(f.type, raw)
        return cls(**values)


def coerce(type_name: Any, raw: str) -> Any:
    name = type_name if isinstance(type_name, str) else type_name.__name__
    if name == "bool":
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if name == "int":
        return int(raw)
    if name == "float":
        return float(raw)
    if name == "Path":
        return Path(raw)
    return raw
