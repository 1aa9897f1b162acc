"""JSON responses and the one place where errors become HTTP."""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from ferry.errors import FerryError, PayloadTooLarge, RequestTimeout
from ferry.observability.context import with_request_id

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
    watchdog = BodyReadWatchdog.of(task.get_loop())
    watchdog.watch(task, timeout)
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
        if watchdog.expired(task):
            raise RequestTimeout(f"request body not received within {timeout:g} s") from None
        raise
    finally:
        watchdog.done(task)


class BodyReadWatchdog:
    """Cancels body reads that overrun their timeout, from one coarse ticker for all requests.

    One timer per request (``asyncio.timeout``) costs a heap push and a cancel on every prediction; a
    dict entry costs a tenth of that, and a body timeout (seconds) needs no finer than 50 ms resolution.
    """

    TICK_S = 0.05

    def __init__(self) -> None:
        self._deadlines: dict[asyncio.Task[Any], float] = {}
        self._cancelled: set[asyncio.Task[Any]] = set()
        self._ticker: asyncio.TimerHandle | None = None

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> BodyReadWatchdog:
        """The watchdog of ``loop`` (one per event loop: tasks are cancelled from their own loop)."""
        watchdog = _WATCHDOGS.get(loop)
        if watchdog is None:
            watchdog = _WATCHDOGS[loop] = cls()  # holds no reference to the loop while idle
        return watchdog

    def watch(self, task: asyncio.Task[Any], timeout: float) -> None:
        loop = task.get_loop()
        self._deadlines[task] = loop.time() + timeout
        if self._ticker is None:
            self._ticker = loop.call_later(self.TICK_S, self._tick, loop)

    def done(self, task: asyncio.Task[Any]) -> None:
        self._deadlines.pop(task, None)
        self._cancelled.discard(task)

    def expired(self, task: asyncio.Task[Any]) -> bool:
        """True when the watchdog cancelled ``task``; the cancellation is then taken back."""
        if task in self._cancelled:
            task.uncancel()
            return True
        return False

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        for task, deadline in list(self._deadlines.items()):
            if now >= deadline and task not in self._cancelled:
                self._cancelled.add(task)
                task.cancel()
        self._ticker = loop.call_later(self.TICK_S, self._tick, loop) if self._deadlines else None


_WATCHDOGS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, BodyReadWatchdog] = weakref.WeakKeyDictionary()
