"""Plain ASGI middleware around the whole app: the request ID, and the access log line.

Every HTTP request gets an ``X-Request-ID``: the client's when it sends a usable one, else a new
one. It is set in a context variable for the request (error bodies, log lines and the prediction
log read it there) and returned as a response header. When the response is done, one access log
line records the method, path (never the query string, which may carry secrets), status, latency,
bytes sent, model and request ID, like gunicorn's.
"""

from __future__ import annotations

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
access_logger = logging.getLogger("ferry.access")


class RequestContext:
    def __init__(self, app: ASGIApp, access_log: bool = True) -> None:
        self.app = app
        self.access_log = access_log
        self.ids = RequestIds()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = self.request_id(scope["headers"])
        header = (b"x-request-id", request_id.encode())
        token = REQUEST_ID.set(request_id)
        start = time.perf_counter()
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
            await self.app(scope, receive, send_with_id)
        except BaseException:
            status = status or 500
            raise
        finally:
            if self.access_log:
                self.log(scope, status, size, time.perf_counter() - start)
            REQUEST_ID.reset(token)

    def request_id(self, headers: list[tuple[bytes, bytes]]) -> str:
        """The client's ``X-Request-ID`` when acceptable, else a new one."""
        for key, value in headers:
            if key == b"x-request-id":
                accepted = accept_id(value)
                if accepted is not None:
                    return accepted
                break
        return self.ids.next()

    def log(self, scope: Scope, status: int, size: int, elapsed: float) -> None:
        if not access_logger.isEnabledFor(logging.INFO):
            return
        model = scope.get(MODEL_KEY) or scope.get("path_params", {}).get("name")
        client = scope.get("client")
        access_logger.info(
            "%s %s %d",
            scope["method"],
            scope["path"],
            status,
            extra={
                "method": scope["method"],
                "path": scope["path"],
                "status": status,
                "latency_ms": round(elapsed * 1000.0, 3),
                "bytes": size,
                "model": model,
                "client": client[0] if client else None,
            },
        )
