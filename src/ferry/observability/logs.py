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
    """``2024-05-01 12:00:00,000 INFO ferry.access: GET /models/iris/predict 200 1.2ms 38B model=iris id=...``.

    One record is one line: control characters in any field (a path with ``%0A``, a model's error
    message) are written escaped (``\\n``, ``\\x1b``), as nginx escapes its access log, and a traceback's
    lines are indented under their record, so nothing a client sends can start a line of its own.
    """

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        record.asctime = self.formatTime(record, self.datefmt)
        fields = [escape(self.formatMessage(record))]
        fields += [f"{k}={escape(str(v))}" for k, v in record.__dict__.items() if k not in _STANDARD]
        request_id = current_request_id()
        if request_id is not None:
            fields.append(f"request_id={escape(request_id)}")
        line = " ".join(fields)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        for block in (record.exc_text, record.stack_info and self.formatStack(record.stack_info)):
            if block:
                line += "".join(f"\n  {escape(part)}" for part in block.split("\n"))
        return line


# Every C0 and C1 control character, DEL and the Unicode line separators, and the backslash that escapes them.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}
_ESCAPES |= {ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t", ord("\\"): "\\\\"}
_ESCAPES |= {0x2028: "\\u2028", 0x2029: "\\u2029"}


def escape(text: str) -> str:
    """``text`` on one line, its control characters written as escapes (``\\n``, ``\\x1b``)."""
    return text.translate(_ESCAPES)


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
