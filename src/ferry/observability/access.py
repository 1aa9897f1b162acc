"""The request ID and the access log line: for the request pipeline (``ferry.http.pipeline.ContextStep``),
and as plain ASGI around the routes the pipeline does not serve (Starlette's).

Every HTTP request gets an ``X-Request-ID``: the client's when it sends a usable one, else a new
one. It is set in a context variable for the request (error bodies, log lines and the prediction
log read it there) and returned as a response header. When the response is done, one access log
line records the method, path (never the query string, which may carry secrets), status, latency,
bytes sent, model and request ID, like gunicorn's. A request cancelled because its client hung up is
logged with nginx's 499 ("client closed request"), whichever way it was served.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ferry.observability.context import REQUEST_ID, RequestIds, accept_id

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MODEL_KEY = "ferry.model"  # the hot path names the model it served in the scope under this key
CLIENT_CLOSED = 499  # nginx's status for a request whose client went before the reply
access_logger = logging.getLogger("ferry.access")


class RequestContext:
    """Request IDs and the access log, for the pipeline's step and around an ASGI app (``asgi``)."""

    def __init__(self, access_log: bool = True) -> None:
        self.access_log = access_log
        self.ids = RequestIds()

    def asgi(self, app: ASGIApp) -> ASGIApp:
        """``app`` with the request ID on every response and an access log line per request."""

        async def with_context(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            await self._serve(app, scope, receive, send)

        return with_context

    async def _serve(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = self.request_id(scope["headers"])
        header = (b"x-request-id", request_id.encode())
        token = REQUEST_ID.set(request_id)
        start = time.monotonic()
        status, size = 0, 0

        async def send_with_id(message: Message) -> None:
            nonlocal status, size
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            elif message["type"] == "http.response.body":
                size += len(message.get("body", b""))
            await send(message)

        try:
            await app(scope, receive, send_with_id)
        except BaseException as exc:
            status = self.failed_status(exc) if not status or isinstance(exc, asyncio.CancelledError) else status
            raise
        finally:
            if self.access_log:
                model = scope.get(MODEL_KEY) or scope.get("path_params", {}).get("name")
                elapsed = time.monotonic() - start
                self.log(scope["method"], scope["path"], status, size, elapsed, model, scope.get("client"))
            REQUEST_ID.reset(token)

    @staticmethod
    def failed_status(exc: BaseException) -> int:
        """The status logged for a request that raised: 499 when cancelled (its client went), else 500."""
        return CLIENT_CLOSED if isinstance(exc, asyncio.CancelledError) else 500

    def request_id(self, headers: list[tuple[bytes, bytes]]) -> str:
        """The client's ``X-Request-ID`` when acceptable, else a new one."""
        for key, value in headers:
            if key == b"x-request-id":
                accepted = accept_id(value)
                if accepted is not None:
                    return accepted
                break
        return self.ids.next()

    def log(
        self, method: str, path: str, status: int, size: int, elapsed: float, model: str | None, client: Any
    ) -> None:
        if not access_logger.isEnabledFor(logging.INFO):
            return
        access_logger.info(
            "%s %s %d",
            method,
            path,
            status,
            extra={
                "method": method,
                "path": path,
                "status": status,
                "latency_ms": round(elapsed * 1000.0, 3),
                "bytes": size,
                "model": model,
                "client": client[0] if client else None,
            },
        )
