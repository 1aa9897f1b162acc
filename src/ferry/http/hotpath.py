"""The lean hot path: POST predict routes dispatched by exact path, ahead of Starlette's stack.

Starlette's middleware and regex routing cost more per request than a compiled model does, so
the predict routes of every loaded model (native, OIP v2 infer, and the POST compatibility routes)
are looked up in one dict by their exact path and served as plain ASGI. They call the same service
layer as the Starlette endpoints; everything else (and any path not in the dict) falls through to
Starlette, which serves the same routes too.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.datastructures import State

from ferry.auth import TokenAuth
from ferry.bundle.manifest import CompatRoute, read_manifest
from ferry.errors import FerryError, InvalidInput, Unauthorized
from ferry.http.compat import RESERVED_PREFIXES, ROUTED_MODEL_KEY
from ferry.http.endpoints import ModelEndpoints, parse_timeout
from ferry.http.responses import error_response, read_asgi_body
from ferry.observability.access import MODEL_KEY, RequestContext
from ferry.protocol import v2, v2_rest
from ferry.protocol.native import parse_json
from ferry.serving.registry import ModelHandle

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Handler = Callable[[Scope, Receive, Send], Awaitable[None]]

_JSON_HEADERS = [(b"content-type", b"application/json")]


class FerryApp:
    """The ASGI app: the hot path first, Starlette for everything else (and the lifespan)."""

    def __init__(
        self,
        app: Starlette,
        routes: dict[str, Handler],
        auth: TokenAuth | None = None,
        access_log: bool = True,
        routing: Callable[[Handler], Handler] | None = None,
        tracing: Callable[[Handler], Handler] | None = None,
    ) -> None:
        self.app = app
        self.routes = routes
        self.auth = auth
        # ``--routes``: the router sits after auth and in front of the local dispatch, which it calls.
        self.serve: Handler = self.serve_local if routing is None else routing(self.serve_local)
        # ``--tracing``: marks each request's phases for its spans; absent otherwise, so it costs nothing.
        traced = self.dispatch if tracing is None else tracing(self.dispatch)
        # Outermost: every response, the hot path's and Starlette's, carries X-Request-ID and is access-logged.
        self.entry = RequestContext(traced, access_log)

    @property
    def state(self) -> State:
        return self.app.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.entry(scope, receive, send)

    async def dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.auth is not None and scope["type"] == "http" and self.auth.requires(scope["path"]):
            try:
                self.auth.check(scope["headers"])
            except Unauthorized as exc:
                await error_response(exc)(scope, receive, send)
                return
        await self.serve(scope, receive, send)

    async def serve_local(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            handler = self.routes.get(scope["path"])
            if handler is not None:
                await handler(scope, receive, send)
                return
        await self.app(scope, receive, send)


def hot_routes(endpoints: ModelEndpoints) -> dict[str, Handler]:
    """Exact paths of the predict routes: native, OIP v2 infer, and the POST compatibility routes of every model."""
    routes: dict[str, Handler] = {}
    registry = endpoints.registry
    for name, versions in registry.models.items():
        native, v2_infer = _native(endpoints, None), _v2_infer(endpoints)
        for prefix, v in [(name, None), *((f"{name}/versions/{v}", v) for v in versions)]:
            routes[f"/models/{prefix}/predict"] = _hot_handler(endpoints, name, v, "model/predict", "native", native)
            routes[f"/v2/models/{prefix}/infer"] = _hot_handler(endpoints, name, v, "v2:infer", "v2", v2_infer)
        try:
            manifest = read_manifest(registry.newest(name).path)
        except FerryError:
            continue
        for spec in manifest.routes:
            hot = spec.method == "POST" and spec.action == "predict" and spec.input.source != "query"
            if hot and not spec.path.startswith(RESERVED_PREFIXES) and spec.path not in routes:
                compat = _native(endpoints, spec)
                routes[spec.path] = _hot_handler(endpoints, name, None, f"compat:{spec.path}", "compat", compat)
    return routes


# What a hot route does between reading the body and sending the answer: (content, extra headers).
Respond = Callable[[Scope, bytes, ModelHandle, "float | None"], Awaitable[tuple[bytes, list[tuple[bytes, bytes]]]]]


def _hot_handler(
    endpoints: ModelEndpoints, name: str, version: str | None, route: str, protocol: str, respond: Respond
) -> Handler:
    """Read the body, find the model (or the one the router chose), respond, count; errors become 4xx/5xx JSON."""
    registry, metrics = endpoints.registry, endpoints.metrics
    limit, body_timeout = endpoints.settings.max_body_bytes, endpoints.settings.body_timeout
    latency = metrics.latency.labels(name, route)
    counters: dict[int, Any] = {}

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        scope[MODEL_KEY] = name
        try:
            body = await read_asgi_body(scope, receive, limit, body_timeout)
            timeout = parse_timeout(_header(scope, b"x-request-timeout"))
            model, routed_version = scope.get(ROUTED_MODEL_KEY, (name, version))
            content, extra = await respond(scope, body, registry.get(model, routed_version), timeout)
            headers = [*extra, (b"content-length", str(len(content)).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": content})
            status = 200
        except Exception as exc:
            response = error_response(exc)
            code = exc.code if isinstance(exc, FerryError) else "internal"
            metrics.errors.labels(name, code).inc()
            await response(scope, receive, send)
            status = response.status_code
        counter = counters.get(status)
        if counter is None:
            counter = counters[status] = metrics.requests.labels(name, route, protocol, str(status))
        counter.inc()
        latency.observe(time.perf_counter() - start)

    return handler


def _native(endpoints: ModelEndpoints, spec: CompatRoute | None) -> Respond:
    """Native JSON, or a compatibility route's reshaping of it (``body_key`` in, ``response_key`` out)."""

    async def respond(
        scope: Scope, body: bytes, handle: ModelHandle, timeout: float | None
    ) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        payload = parse_json(body)
        if spec is not None and spec.input.source == "body_key":
            payload = _body_key(payload, spec.input.key or "")
        result = await endpoints.predict_payload(handle, payload, timeout)
        if spec is not None:
            value = result["prediction"] if "prediction" in result else result["predictions"]
            result = value if spec.response_key is None else {spec.response_key: value}
        return orjson.dumps(result, option=orjson.OPT_SERIALIZE_NUMPY), _JSON_HEADERS

    return respond


def _v2_infer(endpoints: ModelEndpoints) -> Respond:
    """Open Inference Protocol v2 REST infer, with the binary tensor extension; as ``ProtocolEndpoints.v2_infer``."""
    service = endpoints.service

    async def respond(
        scope: Scope, body: bytes, handle: ModelHandle, timeout: float | None
    ) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        header_length = _header(scope, v2_rest.HEADER_LENGTH.encode())
        infer = v2_rest.decode_request(body, header_length.decode("latin-1") if header_length is not None else None)
        v2.check_requested(infer, handle)
        prediction = await service.predict(handle, v2.to_batch(infer.inputs, handle), timeout)
        outputs = v2.to_outputs(prediction, handle, infer)
        content, extra = v2_rest.encode_response(infer, handle.name, handle.version, outputs)
        if not extra:
            return content, _JSON_HEADERS
        headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()]
        return content, [(b"content-type", b"application/octet-stream"), *headers]

    return respond


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value  # type: ignore[no-any-return]
    return None


def _body_key(payload: Any, key: str) -> Any:
    if not isinstance(payload, dict) or key not in payload:
        raise InvalidInput(f"missing field '{key}'", f"$.{key}")
    return payload[key]
