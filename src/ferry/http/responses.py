"""JSON responses and the one place where errors become HTTP."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from ferry.errors import FerryError, PayloadTooLarge, RequestTimeout
from ferry.observability.context import with_request_id
from ferry.serving.timers import CoarseTimers

logger = logging.getLogger("ferry.http")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def json_response(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content, option=_OPTIONS), status, headers, media_type="application/json")


def error_response(exc: Exception) -> Response:
    """A FerryError keeps its status and message; anything else is a 500 whose details stay in the log."""
    if isinstance(exc, FerryError):
        if exc.status >= 500 and not exc.expected:
            logger.error("%s: %s", exc.code, exc.message, exc_info=exc.__cause__)
        return json_response(with_request_id(exc.to_dict()), exc.status, exc.headers)
    logger.exception("unhandled error", exc_info=exc)
    return json_response(with_request_id({"error": "internal server error", "code": "internal"}), 500)


async def read_body(request: Request, limit: int, timeout: float = 30.0) -> bytes:
    """The request body of a Starlette request; see ``read_asgi_body``."""
    return await read_asgi_body(request.scope, request.receive, limit, timeout)


async def read_asgi_body(scope: Scope, receive: Receive, limit: int, timeout: float = 30.0) -> bytes:
    """The whole body: 413 past ``limit`` bytes (declared or streamed), 408 if it takes over ``timeout`` s."""
    for key, value in scope["headers"]:
        if key == b"content-length" and value.isdigit() and int(value) > limit:
            raise PayloadTooLarge(f"request body of {int(value)} bytes exceeds the limit of {limit} bytes")
    task = asyncio.current_task()
    assert task is not None
    loop = task.get_loop()
    timers, expired = CoarseTimers.of(loop), _Expired()  # a body timeout needs no per-request loop timer
    timers.add(loop, task, timeout, expired.cancel, task)
    try:
        message = await receive()
        body: bytes = message.get("body", b"")
        if not message.get("more_body", False):
            return body
        chunks, size = [body], len(body)
        while message.get("more_body", False):
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
    except asyncio.CancelledError:
        if expired.fired:
            task.uncancel()
            raise RequestTimeout(f"request body not received within {timeout:g} s") from None
        raise
    finally:
        timers.cancel(task)


class _Expired:
    """Cancels a body read whose timeout passed, and remembers that it did (not the client, not a shutdown)."""

    __slots__ = ("fired",)

    def __init__(self) -> None:
        self.fired = False

    def cancel(self, task: asyncio.Task[Any]) -> None:
        self.fired = True
        task.cancel()
