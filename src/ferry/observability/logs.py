"""Log configuration for every process: one JSON object per line, or readable text (``--log-format``).

``logging_config`` returns a ``dictConfig`` dict; ``ferry serve`` hands it to uvicorn, which
applies it in the parent and in every worker process, so Ferry's and uvicorn's loggers share one
format. Fields passed as ``extra=`` (the access log's method, path, status...) become JSON keys.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from typing import Any

import orjson

from ferry.observability.context import current_request_id

LOG_FORMATS = ("json", "text")
# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "color_message",
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process or os.getpid(),
        }
        request_id = current_request_id()
        if request_id is not None:
            entry["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    """``2024-05-01 12:00:00,000 INFO ferry.access: GET /models/iris/predict 200 1.2ms 38B model=iris id=...``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = [f"{k}={v}" for k, v in record.__dict__.items() if k not in _STANDARD]
        request_id = current_request_id()
        if request_id is not None:
            extras.append(f"request_id={request_id}")
        return f"{line} {' '.join(extras)}" if extras else line


def logging_config(level: str = "info", log_format: str = "json") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for ``--log-level`` and ``--log-format``, covering uvicorn's loggers."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"--log-format must be one of {', '.join(LOG_FORMATS)}, got '{log_format}'")
    formatter = JsonFormatter if log_format == "json" else TextFormatter
    handler = {"class": "logging.StreamHandler", "formatter": "ferry", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"ferry": {"()": f"{formatter.__module__}.{formatter.__qualname__}"}},
        "handlers": {"ferry": handler},
        "root": {"handlers": ["ferry"], "level": level.upper()},
        "loggers": {
            "uvicorn": {"level": level.upper(), "handlers": [], "propagate": True},
            "uvicorn.error": {"level": level.upper(), "handlers": [], "propagate": True},
            "uvicorn.access": {"level": "WARNING", "handlers": [], "propagate": True},
        },
    }


def configure_logging(level: str = "info", log_format: str = "json") -> None:
    import logging.config

    logging.config.dictConfig(logging_config(level, log_format))
