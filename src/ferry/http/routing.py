"""``ferry serve --routes``: the routes file applied in front of the server's own models, as plain ASGI.

A routed request is one addressed to the router's own name (``/models/{name}/...``,
``/v2/models/{name}/...``, ``/v1/models/{name}:predict``, ``/seldon/{name}/...``) or to a
root compatibility route such as ``/predict``. Its model is swapped for the chosen target, then it
goes on to the same endpoints as any request, so every HTTP protocol is routed the same way.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

from ferry.errors import RoutesError
from ferry.http.responses import error_response, read_asgi_body
from ferry.protocol.native import parse_json
from ferry.routing.keys import ROUTED_MODEL_KEY
from ferry.routing.router import Decision, Router, RouteRequest, named_paths, rewrite_path
from ferry.routing.shadow import RoutingMetrics, ShadowJob, ShadowRunner
from ferry.routing.spec import RoutesFile, Target

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Handler = Callable[[Scope, Receive, Send], Awaitable[None]]

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_BODY_HEADERS = frozenset({b"content-encoding", b"content-length", b"transfer-encoding"})  # of the body as sent


class RoutingMiddleware:
    """Decide, rewrite, call the local app; then, off the client's path, run the shadow."""

    def __init__(
        self,
        routes: RoutesFile,
        metrics: RoutingMetrics,
        compat_paths: set[str],
        max_body_bytes: int,
        body_timeout: float = 30.0,
    ) -> None:
        for target in routes.targets():
            if target.url is not None:
                raise RoutesError(f"target {target.url}: `ferry serve` routes to its own models; use `ferry gateway`")
        self.app: Handler = _unwired
        self.router = Router(routes)
        self.metrics = metrics
        self.shadows = ShadowRunner(metrics)
        self.name = routes.name
        self.compat_paths = compat_paths
        self.limit, self.body_timeout = max_body_bytes, body_timeout
        self._named = named_paths(routes.name)

    def wrap(self, app: Handler) -> Handler:
        """Put the router in front of ``app`` (the server's local dispatch)."""
        self.app = app
        return self

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        named = self._named.match(path)
        if named is None and path not in self.compat_paths:
            await self.app(scope, receive, send)
            return
        try:
            body = b""
            if scope["method"] in _BODY_METHODS:
                body = await read_asgi_body(scope, receive, self.limit, self.body_timeout)
                scope = _as_read(scope, body)
            decision = self.router.decide(self._request(scope, body))
        except Exception as exc:
            await error_response(exc)(scope, receive, send)
            return
        if decision is None:
            await self.app(scope, _replay(body, receive), send)
            return
        await self._route(scope, body, decision, receive, send)

    def _request(self, scope: Scope, body: bytes) -> RouteRequest:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True))
        parsed = None
        if self.router.needs_body and body:
            try:
                parsed = parse_json(body)
            except Exception:
                parsed = None  # not JSON: body conditions simply do not match; the endpoint reports the error
        return RouteRequest(scope["path"], headers, query, parsed)

    async def _route(self, scope: Scope, body: bytes, decision: Decision, receive: Receive, send: Send) -> None:
        target = decision.target
        self.metrics.routed.labels(decision.rule, target.key).inc()
        shadow = decision.shadow
        captured: list[bytes] = []
        status = [0]
        route_headers = [(b"x-ferry-route", decision.rule.encode()), (b"x-ferry-target", target.key.encode())]

        async def send_tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message = {**message, "headers": [*message.get("headers", []), *route_headers]}
            elif message["type"] == "http.response.body" and shadow is not None:
                captured.append(message.get("body", b""))
            await send(message)

        started = time.perf_counter()
        await self.app(self._rewrite(scope, target), _replay(body, receive), send_tagged)
        latency = time.perf_counter() - started
        self.metrics.latency.labels(decision.rule, "primary", target.key).observe(latency)
        if shadow is not None and status[0] == 200:
            shadow_scope = self._rewrite(scope, shadow)

            async def call() -> tuple[int, bytes]:
                return await _collect(self.app, shadow_scope, body)

            route, primary = decision.route, b"".join(captured)
            job = ShadowJob(decision.rule, shadow.key, primary, latency, route.shadow_timeout_s, route.compare)
            self.shadows.submit(job, call)

    def _rewrite(self, scope: Scope, target: Target) -> Scope:
        new = dict(scope)
        path = rewrite_path(self._named, scope["path"], target)
        if path is None:  # a root compatibility route: the endpoint reads the model from the scope
            new[ROUTED_MODEL_KEY] = (target.model, target.version)
        else:
            new["path"], new["raw_path"] = path, path.encode()
        return new

    async def close(self) -> None:
        await self.shadows.close()


def _as_read(scope: Scope, body: bytes) -> Scope:
    """``scope`` for the body as read: decompressed, so the endpoint must not decompress it a second time."""
    headers = [(k, v) for k, v in scope["headers"] if k not in _BODY_HEADERS]
    headers.append((b"content-length", b"%d" % len(body)))
    return {**scope, "headers": headers}


async def _unwired(scope: Scope, receive: Receive, send: Send) -> None:
    raise RuntimeError("RoutingMiddleware.wrap(app) was not called")


def _replay(body: bytes, then: Receive | None = None) -> Receive:
    """The body already read, then the client's own messages (a disconnect), if there is a client."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return await then() if then is not None else {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


async def _collect(app: Handler, scope: Scope, body: bytes) -> tuple[int, bytes]:
    status, chunks = 0, []

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, _replay(body), send)
    return status, b"".join(chunks)
