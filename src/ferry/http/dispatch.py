"""The one HTTP dispatcher: every predict route of every protocol, the request pipeline's last step.

Predict routes are the predict rows of the route table (``ferry.protocol.routes``) and each model's
compatibility routes, found by their exact path for every model and version in a table rebuilt
whenever the registry changes, so a version loaded later through the admin API is served here too.
A predict path naming a model the registry does not hold, or a Seldon namespace, matches the
row's template instead, so the client still gets the model's 404. Each route decodes the body (bounded, and
decompressed when the client sent ``Content-Encoding``), then makes exactly one call:
``DataPlane.infer`` with the route's codec. Anything else the pipeline carries (a routed path that does not
predict: metadata, readiness) is answered by Starlette, whole.

``FerryApp`` is the ASGI adapter: it reads the body of a request the pipeline serves and calls the pipeline;
it hands every other request (the console, docs, metadata, probes) to Starlette, with the request ID, the
access log and auth of the same objects the pipeline's steps use.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping, Set
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import State

from ferry.auth import TokenAuth
from ferry.bundle.manifest import CompatRoute
from ferry.errors import FerryError, InvalidInput, MethodNotAllowed
from ferry.http import compat
from ferry.http.pipeline import AuthStep, Exchange, Pipeline, Reply, content_length, error_reply
from ferry.http.responses import read_body_as_sent, whole_body
from ferry.observability.access import RequestContext
from ferry.protocol.codecs import CODECS, CompatCodec, HttpCodec, HttpMessage
from ferry.protocol.explain import EXPLAIN_CODECS
from ferry.protocol.routes import PREDICT, ROUTES, HttpRoute
from ferry.routing.keys import ROUTED_MODEL_KEY
from ferry.serving.dataplane import DataPlane, report
from ferry.serving.registry import ModelRegistry

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Forwarded = Callable[[Scope], Awaitable[None]]  # applies X-Forwarded-* to a scope, as uvicorn's middleware does

_TIMEOUT_HEADER = b"x-request-timeout"
logger = logging.getLogger("ferry.http")


@dataclass(frozen=True, slots=True)
class Target:
    """What a predict path means: a codec, a model and a pinned version (None: the default one)."""

    codec: HttpCodec
    model: str
    version: str | None = None
    refusal: FerryError | None = None  # a path that names no model when several are served
    explain: bool = False  # the model's exact contributions (``DataPlane.explain``), not its prediction


# The codec of each predict row: a protocol's own, or its explain codec (``native:explain``).
_CODECS: dict[str, HttpCodec] = {**CODECS, **{f"{k}:explain": c for k, c in EXPLAIN_CODECS.items()}}
# The rows that name a model, matched as templates when the exact table does not hold the path.
_TEMPLATES = [route for route in PREDICT if "name" in route.params]
# Open to anyone while no bundle declares a route at ``/`` (Starlette answers HEAD for a GET).
_ROOT = frozenset((m, r.path) for r in ROUTES if r.public and r.path == "/" for m in (r.method, "HEAD"))


class PredictRoutes:
    """The exact-path table of every predict route, by method; rebuilt on the next request after a change."""

    def __init__(
        self, registry: ModelRegistry, mounted: Set[tuple[str, str]] = frozenset(), served: Set[str] = frozenset()
    ) -> None:
        """``mounted``: the compatibility health routes the app answers (``compat.health_routes``, fixed at
        start); ``served``: every other literal path the app answers, none of which a health route may open."""
        self.registry = registry
        self.mounted, self.served = frozenset(mounted), frozenset(served)
        self._table: dict[str, dict[str, Target]] | None = None
        self._public: frozenset[tuple[str, str]] = frozenset()
        registry.on_change(self.invalidate)

    def invalidate(self) -> None:
        self._table = None

    def table(self) -> dict[str, dict[str, Target]]:
        table = self._table
        if table is None:
            accepted = compat.declared(self.registry)
            table = self._build(accepted)
            self._public = self._open(accepted, table)
            self._table = table
        return table

    def public(self) -> frozenset[tuple[str, str]]:
        """The (method, path) pairs that need no token (``TokenAuth`` asks), rebuilt with the table.

        ``GET /`` (the console page, or liveness) unless a bundle declares a route at ``/``, and each
        accepted health route of a bundle, for its own method only, where no other route serves its path.
        """
        self.table()
        return self._public

    def predicts(self, method: str, path: str) -> bool:
        """Whether ``method path`` is the dispatcher's: a predict route (or one answered 405), not Starlette's."""
        by_path = self.table().get(method)
        if by_path is not None and path in by_path:
            return True
        try:
            return self.find(method, path) is not None
        except MethodNotAllowed:
            return True

    def find(self, method: str, path: str) -> Target | None:
        """The route of ``method path``; a 405 naming the allowed methods if the path predicts by another."""
        table = self.table()
        by_path = table.get(method)
        target = by_path.get(path) if by_path is not None else None
        if target is not None:
            return target
        allowed = [m for m, paths in table.items() if m != method and path in paths]
        for route in _TEMPLATES:
            match = route.pattern.fullmatch(path)
            if match is not None:
                if route.method == method:
                    return _target(route, match["name"], match.groupdict().get("version"))
                allowed.append(route.method)
        if allowed:
            raise MethodNotAllowed(f"method {method} not allowed on {path}", sorted(set(allowed)))
        return None

    def _open(
        self, accepted: list[tuple[str, CompatRoute]], table: dict[str, dict[str, Target]]
    ) -> frozenset[tuple[str, str]]:
        claims = Counter(spec.path for _, spec in accepted)
        predicted = {path for by_path in table.values() for path in by_path}
        public = set() if claims["/"] else set(_ROOT)
        for _, spec in accepted:
            route = (spec.method, spec.path)
            alone = claims[spec.path] == 1 and spec.path not in predicted and spec.path not in self.served
            if spec.action == "health" and route in self.mounted and alone:
                public.add(route)
        return frozenset(public)

    def _build(self, accepted: list[tuple[str, CompatRoute]]) -> dict[str, dict[str, Target]]:
        table: dict[str, dict[str, Target]] = {"POST": {}, "GET": {}}
        names = list(self.registry.models)
        for route in PREDICT:
            by_path = table.setdefault(route.method, {})
            if "namespace" in route.params:
                continue  # a Seldon namespace is matched by the template
            if "name" not in route.params:
                unnamed = _unnamed(route, names)
                if unnamed is not None:
                    by_path[route.path] = unnamed
                continue
            for name in names:
                pinned = list(self.registry.models.get(name, {})) if "version" in route.params else [None]
                for version in pinned:
                    by_path[route.path.format(name=name, version=version)] = _target(route, name, version)
        for name, spec in accepted:
            if spec.action in ("predict", "predict_test"):
                table["POST" if spec.method == "POST" else "GET"][spec.path] = _compat(name, spec)
        return table


def _target(route: HttpRoute, model: str, version: str | None = None) -> Target:
    return Target(_CODECS[route.handler], model, version, explain=route.handler.endswith(":explain"))


def _compat(name: str, spec: CompatRoute) -> Target:
    return Target(CompatCodec(spec), name)


def _unnamed(route: HttpRoute, names: list[str]) -> Target | None:
    """A path that names no model (``/invocations``, ``/api/v1.0/predictions``): fine with one model served;
    with several, a 400 naming each model's own path, not a bare 404."""
    if len(names) == 1:  # as `mlflow models serve` does for its one model
        return _target(route, names[0])
    if route.protocol == "mlflow":
        if not names:
            return None
        paths = ", ".join(f"/models/{n}/invocations" for n in sorted(names))
        refusal = InvalidInput(f"{len(names)} models are served; name one: POST {paths}")
    else:
        refusal = InvalidInput(
            f"{len(names)} models are served ({', '.join(sorted(names)) or 'none'}); "
            f"name one: POST /seldon/{{model}}{route.path}"
        )
    return Target(_CODECS[route.handler], "", refusal=refusal)


class Dispatch:
    """The pipeline's last step: a predict route's one ``DataPlane`` call; any other path, Starlette, whole."""

    def __init__(self, plane: DataPlane, routes: PredictRoutes, app: ASGIApp, max_body_bytes: int) -> None:
        self.plane, self.routes, self.app = plane, routes, app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, exchange: Exchange) -> Reply:
        try:
            target = self.routes.find(exchange.method, exchange.path)
        except MethodNotAllowed as exc:
            return error_reply(report(exc))
        if target is None:
            return await self.starlette(exchange)
        return await self.predict(target, exchange)

    async def predict(self, target: Target, exchange: Exchange) -> Reply:
        """Status, headers and body of a predict route's reply: one ``DataPlane.infer`` (or ``explain``) call."""
        model, version = exchange.routed or (target.model, target.version)
        exchange.model = model
        headers, limit, refusal = exchange.headers, self.max_body_bytes, target.refusal
        timeout = None
        for key, value in headers:
            if key == _TIMEOUT_HEADER:
                timeout = value
                break

        async def read() -> HttpMessage:
            if refusal is not None:
                raise refusal
            return HttpMessage(whole_body(headers, exchange.whole_body(), limit), headers, exchange.query)

        try:
            call = self.plane.explain if target.explain else self.plane.infer
            content, extra = await call(target.codec, model, version, read, timeout)
        except FerryError as exc:
            return error_reply(exc)
        return Reply(200, [*extra, content_length(content)], content)

    async def starlette(self, exchange: Exchange) -> Reply:
        """A request the pipeline carried that no predict route serves (a routed path's metadata), from Starlette."""
        path, headers = exchange.path, exchange.headers
        scope = {**exchange.scope, "path": path, "raw_path": path.encode(), "headers": headers}
        if exchange.routed is not None:
            scope[ROUTED_MODEL_KEY] = exchange.routed
        status, reply_headers, chunks = 0, [], []

        async def send(message: Message) -> None:
            nonlocal status, reply_headers
            if message["type"] == "http.response.start":
                status, reply_headers = message["status"], list(message.get("headers", ()))
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        try:
            await self.app(scope, _replay(exchange.whole_body()), send)
        except Exception:
            if not status:
                raise
            logger.exception("Exception in ASGI application")  # (after its 500 was sent, as uvicorn logs it)
        return Reply(status, reply_headers, b"".join(chunks))


class FerryApp:
    """The ASGI adapter: X-Forwarded-*, then the request pipeline for what it serves, else Starlette.

    ``pipeline`` is also what the connection (``ferry.server.lane``) calls for a request whose body is whole,
    when this app is the one the server runs (``ferry.server.run.FerryConfig``).
    """

    def __init__(
        self,
        app: Starlette,
        plane: DataPlane,
        pipeline: Pipeline,
        context: RequestContext,
        auth: AuthStep | None,
        routes: PredictRoutes,
        limits: tuple[int, float],
    ) -> None:
        self.app = app
        self.plane = plane
        self.pipeline = pipeline
        self.starlette_in_context = context.asgi(self.starlette)  # the pipeline's ContextStep's, around Starlette
        self.auth_step = auth
        self.routes = routes
        self.max_body_bytes, self.body_timeout = limits
        self.forwarded: Forwarded | None = None  # set by the server that runs the app (uvicorn's --proxy-headers)

    @property
    def state(self) -> State:
        return self.app.state

    @property
    def auth(self) -> TokenAuth | None:
        """The tokens (gRPC checks the same ones), or None."""
        return self.auth_step.auth if self.auth_step is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        await self.forward(scope)
        if not self.pipeline.serves(scope["method"], scope["path"]):
            await self.starlette_in_context(scope, receive, send)  # request ID, access log, auth, Starlette
            return
        body, error = b"", None
        try:
            body = await read_body_as_sent(scope, receive, self.max_body_bytes, self.body_timeout)
        except FerryError as exc:
            error = exc  # raised where the body is needed, after the request ID, auth and the router
        exchange = Exchange.of(scope, body, started)
        exchange.body_error = error
        reply = await self.pipeline(exchange)
        await send({"type": "http.response.start", "status": reply.status, "headers": reply.headers})
        await send({"type": "http.response.body", "body": reply.body})

    def serves(self, method: str, path: str) -> bool:
        return self.pipeline.serves(method, path)

    async def answer(self, scope: Scope, body: bytes) -> Reply:
        """The connection's call, for a request the pipeline serves whose body is whole: ``__call__`` less the read."""
        started = time.monotonic()
        await self.forward(scope)
        return await self.pipeline(Exchange.of(scope, body, started))

    def set_forwarded(self, forwarded: Forwarded) -> None:
        """Apply ``X-Forwarded-*`` as ``forwarded`` does (uvicorn's proxy headers, from the server's setting)."""
        self.forwarded = forwarded

    async def forward(self, scope: Scope) -> None:
        if self.forwarded is not None:
            for key, _ in scope["headers"]:
                if key.startswith(b"x-forwarded-"):
                    await self.forwarded(scope)
                    break

    async def starlette(self, scope: Scope, receive: Receive, send: Send) -> None:
        """What the pipeline does not serve, after auth (inside the request context): Starlette's routes."""
        if self.auth_step is not None:
            refused = self.auth_step.refusal(scope["method"], scope["path"], scope["headers"])
            if refused is not None:
                await send({"type": "http.response.start", "status": refused.status, "headers": refused.headers})
                await send({"type": "http.response.body", "body": refused.body})
                return
        await self.app(scope, receive, send)


def _replay(body: bytes) -> Receive:
    """The body already read, then a disconnect (a routed path's Starlette reply is plain, never streamed)."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive
