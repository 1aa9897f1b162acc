"""The one HTTP dispatcher: every predict route of every protocol, as plain ASGI, ahead of Starlette.

Predict routes are the predict rows of the route table (``ferry.protocol.routes``) and each model's
compatibility routes, found by their exact path for every model and version in a table rebuilt
whenever the registry changes, so a version loaded later through the admin API is served here too.
A predict path naming a model the registry does not hold, or a Seldon namespace, matches the
row's template instead, so the client still gets the model's 404. Each route reads the body (bounded, and
decompressed when the client sent ``Content-Encoding``), then makes exactly one call:
``DataPlane.infer`` with the route's codec. Everything else falls through to Starlette.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping, Set
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import State

from ferry.auth import TokenAuth
from ferry.bundle.manifest import CompatRoute
from ferry.errors import FerryError, InvalidInput, MethodNotAllowed, Unauthorized
from ferry.http import compat
from ferry.http.responses import error_answer, read_asgi_body, whole_body
from ferry.observability.access import MODEL_KEY, RequestContext
from ferry.observability.context import REQUEST_ID
from ferry.protocol.codecs import CODECS, CompatCodec, HttpCodec, HttpMessage
from ferry.protocol.explain import EXPLAIN_CODECS
from ferry.protocol.routes import PREDICT, ROUTES, HttpRoute
from ferry.routing.keys import ROUTED_MODEL_KEY
from ferry.serving.dataplane import DataPlane, report
from ferry.serving.registry import ModelRegistry

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Handler = Callable[[Scope, Receive, Send], Awaitable[None]]
Reply = tuple[int, list[tuple[bytes, bytes]], bytes]  # status, headers, body

_TIMEOUT_HEADER = b"x-request-timeout"


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


class FerryApp:
    """The ASGI app: request context, auth, the router, then the predict dispatcher, then Starlette."""

    def __init__(
        self,
        app: Starlette,
        plane: DataPlane,
        limits: tuple[int, float],
        auth: TokenAuth | None = None,
        access_log: bool = True,
        routing: Callable[[Handler], Handler] | None = None,
        tracing: Callable[[Handler], Handler] | None = None,
        routes: PredictRoutes | None = None,
    ) -> None:
        self.app = app
        self.plane = plane
        self.routes = routes or PredictRoutes(plane.registry)
        self.max_body_bytes, self.body_timeout = limits
        self.auth = auth
        # ``--routes``: the router sits after auth and in front of the local dispatch, which it calls.
        self.serve: Handler = self.serve_local if routing is None else routing(self.serve_local)
        # ``--tracing``: marks each request's phases for its spans; absent otherwise, so it costs nothing.
        traced = self.dispatch if tracing is None else tracing(self.dispatch)
        # Outermost: every response, the dispatcher's and Starlette's, carries X-Request-ID and is access-logged.
        self.entry = RequestContext(traced, access_log)
        # The connection may answer a predict request itself (``answer_whole``) only where nothing sits
        # between the entry and the dispatch table: no auth, no routes file, no tracing.
        self.lane_open = auth is None and routing is None and tracing is None

    @property
    def state(self) -> State:
        return self.app.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.entry(scope, receive, send)

    async def dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.auth is not None and scope["type"] == "http" and self.auth.requires(scope["method"], scope["path"]):
            try:
                self.auth.check(scope["headers"])
            except Unauthorized as exc:
                await _send_error(report(exc), send)
                return
        await self.serve(scope, receive, send)

    async def serve_local(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            try:
                target = self.routes.find(scope["method"], scope["path"])
            except MethodNotAllowed as exc:
                await _send_error(report(exc), send)
                return
            if target is not None:
                await self.predict(target, scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def predict(self, target: Target, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = target.refusal

        async def read() -> HttpMessage:
            if refusal is not None:
                raise refusal
            body = await read_asgi_body(scope, receive, self.max_body_bytes, self.body_timeout)
            return HttpMessage(body, scope["headers"], scope.get("query_string", b""))

        status, headers, content = await self._answer(target, scope, read)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})

    async def answer_whole(self, scope: Scope, body: bytes) -> Reply | None:
        """The reply to a predict request whose body has arrived whole, or None where the ASGI path must serve it.

        The connection (``ferry.server.connections``) calls this before it would start the ASGI app, to
        spare the common request uvicorn's per-message machinery. It is exactly what the ASGI path does
        for a predict route (the same ``_answer``, the same body limits and decoding, the request ID and
        access log of ``RequestContext``), and it declines whatever that path handles otherwise: auth, a
        routes file, tracing, proxy headers that uvicorn would apply, a path that is not a predict route.
        """
        if not self.lane_open or scope["method"] != "POST":
            return None
        try:
            target = self.routes.find("POST", scope["path"])
        except MethodNotAllowed:
            return None
        if target is None or target.refusal is not None:
            return None
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        for key, _ in headers:
            if key.startswith(b"x-forwarded-"):
                return None
        entry = self.entry
        request_id = entry.request_id(headers)
        token = REQUEST_ID.set(request_id)
        start = time.perf_counter()
        limit = self.max_body_bytes

        async def read() -> HttpMessage:
            return HttpMessage(whole_body(scope, body, limit), headers, scope.get("query_string", b""))

        try:
            status, reply_headers, content = await self._answer(target, scope, read)
            if entry.access_log:
                entry.log(scope, status, len(content), time.perf_counter() - start)  # (the line carries the ID)
        finally:
            REQUEST_ID.reset(token)
        reply_headers.append((b"x-request-id", request_id.encode()))
        return status, reply_headers, content

    async def _answer(self, target: Target, scope: Scope, read: Callable[[], Awaitable[HttpMessage]]) -> Reply:
        """Status, headers and body of a predict route's reply: one ``DataPlane.infer`` call."""
        model, version = scope.get(ROUTED_MODEL_KEY) or (target.model, target.version)
        scope[MODEL_KEY] = model
        timeout = None
        for key, value in scope["headers"]:
            if key == _TIMEOUT_HEADER:
                timeout = value
                break
        try:
            call = self.plane.explain if target.explain else self.plane.infer
            content, extra = await call(target.codec, model, version, read, timeout)
        except FerryError as exc:
            content, extra = error_answer(exc)
            return exc.status, [*extra, _length(content)], content
        return 200, [*extra, _length(content)], content


def _length(content: bytes) -> tuple[bytes, bytes]:
    return (b"content-length", str(len(content)).encode())


async def _send_error(error: FerryError, send: Send) -> None:
    content, headers = error_answer(error)
    await send({"type": "http.response.start", "status": error.status, "headers": [*headers, _length(content)]})
    await send({"type": "http.response.body", "body": content})
