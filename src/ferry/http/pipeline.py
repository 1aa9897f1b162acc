"""One request pipeline: a whole request (``Exchange``) in, a ``Reply`` out, through steps composed once.

    request ID + access log -> tracing marks -> auth -> the ``--routes`` decision -> dispatch

Each step is a plain ``async (exchange, next) -> Reply``, written once here or beside its concern
(``ferry.http.routing``'s router, ``ferry.http.dispatch``'s dispatch). Two transports call the same
pipeline: the connection (``ferry.server.lane``) when the body has arrived whole, and the ASGI
adapter (``ferry.http.dispatch.FerryApp``) after reading it. A request the pipeline does not serve
(the console, docs, metadata: Starlette's routes) gets the request ID, access log and auth from the
same objects, around Starlette.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ferry.auth import TokenAuth
from ferry.errors import FerryError, Unauthorized
from ferry.http.responses import error_answer
from ferry.observability.access import RequestContext
from ferry.observability.context import REQUEST_ID
from ferry.serving.dataplane import report

if TYPE_CHECKING:
    from ferry.observability.tracing import Tracing

Scope = MutableMapping[str, Any]


@dataclass(slots=True)
class Exchange:
    """One HTTP request whose body is whole, as the pipeline's steps see it."""

    method: str
    path: str
    query: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    scope: Scope  # the transport's ASGI scope: the client, scheme and server, for the log and for Starlette
    started: float  # time.monotonic() when the request began: the access log's and the trace's start
    read: float  # when the body was whole
    body_error: FerryError | None = None  # the body could not be read (413, 408): raised where it is read
    model: str | None = None  # the model the dispatch served (the access log's and the trace's)
    routed: tuple[str, str | None] | None = None  # the router's model on a root compatibility route

    @classmethod
    def of(cls, scope: Scope, body: bytes, started: float) -> Exchange:
        return cls(
            scope["method"],
            scope["path"],
            scope.get("query_string", b""),
            scope["headers"],
            body,
            scope,
            started,
            time.monotonic(),
        )

    def but(
        self,
        *,
        path: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
        body: bytes | None = None,
        routed: tuple[str, str | None] | None = None,
    ) -> Exchange:
        """A copy with what a step rewrites (the router); spelt out: ``dataclasses.replace`` costs 6 us a call."""
        return Exchange(
            self.method,
            self.path if path is None else path,
            self.query,
            self.headers if headers is None else headers,
            self.body if body is None else body,
            self.scope,
            self.started,
            self.read,
            self.body_error,
            self.model,
            self.routed if routed is None else routed,
        )

    def whole_body(self) -> bytes:
        if self.body_error is not None:
            raise self.body_error
        return self.body


@dataclass(slots=True)
class Reply:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


Handler = Callable[[Exchange], Awaitable[Reply]]
Step = Callable[[Exchange, Handler], Awaitable[Reply]]
Serves = Callable[[str, str], bool]


class Pipeline:
    """The steps in order, then the endpoint; ``serves(method, path)``: whether a request is the pipeline's."""

    def __init__(self, steps: Sequence[Step], endpoint: Handler, serves: Serves) -> None:
        self.steps = tuple(steps)
        self.serves = serves
        handler = endpoint
        for step in reversed(self.steps):
            handler = _then(step, handler)
        self.handle = handler

    async def __call__(self, exchange: Exchange) -> Reply:
        return await self.handle(exchange)


def _then(step: Step, after: Handler) -> Handler:
    async def handle(exchange: Exchange) -> Reply:
        return await step(exchange, after)

    return handle


def error_reply(error: FerryError) -> Reply:
    """The one JSON error shape (``error_answer``) as a reply."""
    content, headers = error_answer(error)
    return Reply(error.status, [*headers, content_length(content)], content)


def content_length(content: bytes) -> tuple[bytes, bytes]:
    return (b"content-length", str(len(content)).encode())


# -- the steps -------------------------------------------------------------------------------------------
class ContextStep:
    """The request ID (the client's, else a new one; on the reply and in the context) and the access log line.

    A request cancelled because its client hung up is logged with nginx's 499, on either transport.
    """

    def __init__(self, context: RequestContext) -> None:
        self.context = context

    async def __call__(self, exchange: Exchange, after: Handler) -> Reply:
        context = self.context
        request_id = context.request_id(exchange.headers)
        token = REQUEST_ID.set(request_id)
        status, size = 500, 0
        try:
            reply = await after(exchange)
            status, size = reply.status, len(reply.body)
            reply.headers.append((b"x-request-id", request_id.encode()))
            return reply
        except BaseException as exc:
            status = context.failed_status(exc)
            raise
        finally:
            if context.access_log:
                scope = exchange.scope
                elapsed = time.monotonic() - exchange.started
                context.log(exchange.method, exchange.path, status, size, elapsed, exchange.model, scope.get("client"))
            REQUEST_ID.reset(token)


class AuthStep:
    """``TokenAuth`` on every route but the public ones: a 401 before anything else is done."""

    def __init__(self, auth: TokenAuth) -> None:
        self.auth = auth

    def refusal(self, method: str, path: str, headers: list[tuple[bytes, bytes]]) -> Reply | None:
        auth = self.auth
        if auth.requires(method, path):
            try:
                auth.check(headers)
            except Unauthorized as exc:
                return error_reply(report(exc))
        return None

    async def __call__(self, exchange: Exchange, after: Handler) -> Reply:
        refused = self.refusal(exchange.method, exchange.path, exchange.headers)
        return refused if refused is not None else await after(exchange)


class TracingStep:
    """``--tracing``: the request's marks (read, responded) for its spans, drawn when it ends; predictions only."""

    def __init__(self, tracing: Tracing) -> None:
        self.tracing = tracing

    async def __call__(self, exchange: Exchange, after: Handler) -> Reply:
        tracing = self.tracing
        request, token = tracing.start_request()
        request.start, request.read = exchange.started, exchange.read
        try:
            reply = await after(exchange)
            request.status, request.responded = reply.status, time.monotonic()
            return reply
        except BaseException:
            request.status = request.status or 500
            raise
        finally:
            tracing.end_request(token)
            model = request.model or exchange.model  # named even when it failed before the service
            if model is not None:
                tracing.record_http(request, exchange.method, exchange.path, exchange.headers, model)
