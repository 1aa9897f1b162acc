"""The request ID of the request being served, readable anywhere below the ASGI entry point."""

from __future__ import annotations

import itertools
import os
import secrets
from contextvars import ContextVar
from typing import Any

REQUEST_ID: ContextVar[str | None] = ContextVar("ferry_request_id", default=None)
MAX_ID_LENGTH = 128


class RequestIds:
    """Cheap unique IDs: a random per-process prefix and a counter (no syscall, no UUID per request)."""

    def __init__(self) -> None:
        self.prefix = f"{secrets.token_hex(4)}{os.getpid() & 0xFFFF:04x}"
        self._counter = itertools.count(1)

    def next(self) -> str:
        return f"{self.prefix}-{next(self._counter):x}"


def accept_id(raw: bytes) -> str | None:
    """A client's ``X-Request-ID``, if it is short printable ASCII with no spaces; else None (one is made)."""
    if not 0 < len(raw) <= MAX_ID_LENGTH or not raw.isascii():
        return None
    text = raw.decode("ascii")
    return text if text.isprintable() and " " not in text else None


def current_request_id() -> str | None:
    return REQUEST_ID.get()


def with_request_id(body: dict[str, Any]) -> dict[str, Any]:
    """An error body with the request's ID added, so a client can quote it and an operator find it in the log."""
    request_id = REQUEST_ID.get()
    if request_id is not None:
        body["request_id"] = request_id
    return body
