"""``ferry gateway routes.yaml``: a standalone async reverse proxy that applies the routes file to upstreams.

Per upstream: a pooled connection, a timeout, retries with jittered backoff only where a retry is
safe (the connection never opened, or a 503 with Retry-After), a circuit breaker and a health
check. An upstream that is down is answered with a 502 or 503 JSON error at once, never a hang.

Clients reach it through the same connection layer as ``ferry serve`` (``ferry.server.connections``):
head and body deadlines, a cap on open connections that evicts idle and slow clients first, and a cap
kept below the process's file-descriptor limit. A body is forwarded as it came (still compressed);
only a rule that reads the body sees it decompressed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import resource
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import aiohttp
import orjson
import uvicorn
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from ferry.errors import FerryError, PayloadTooLarge, UpstreamError
from ferry.http.responses import decompress
from ferry.routing.router import (
    MODEL_HEADER,
    Router,
    RouteRequest,
    model_from_path,
    model_header_value,
    named_paths,
    rewrite_path,
)
from ferry.routing.shadow import RoutingMetrics, ShadowJob, ShadowRunner
from ferry.routing.spec import RoutesFile, Target, Upstream
from ferry.server.connections import BoundedHttpProtocol, ConnectionLimits
from ferry.server.run import FerryConfig
from ferry.serving.metrics import LATENCY_BUCKETS
from ferry.settings import GatewaySettings, Settings

HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers", "transfer-encoding"}
    | {"upgrade", "host", "content-length"}
)
BACKOFF_BASE_S, BACKOFF_CAP_S = 0.05, 2.0
FD_RESERVE = 64  # descriptors kept back from clients: logs, DNS, health checks, the listening socket
LOCAL_PATHS = frozenset({"/health", "/ready", "/metrics"})

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = dict[str, str]
logger = logging.getLogger("ferry.gateway")

if TYPE_CHECKING:
    from ferry.observability.tracing import Tracing


class GatewayMetrics(RoutingMetrics):
    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry)
        self.requests = Counter(
            "ferry_gateway_requests_total",
            "Proxied requests by upstream and status",
            ["upstream", "status"],
            registry=registry,
        )
        self.upstream_latency = Histogram(
            "ferry_gateway_upstream_seconds",
            "Upstream call latency",
            ["upstream"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.retries = Counter("ferry_gateway_retries_total", "Retries by upstream", ["upstream"], registry=registry)
        self.breaker_open = Gauge(
            "ferry_gateway_breaker_open",
            "1 while an upstream's circuit breaker is open",
            ["upstream"],
            registry=registry,
        )
        self.healthy = Gauge(
            "ferry_gateway_upstream_healthy", "1 when the last health check passed", ["upstream"], registry=registry
        )


@dataclass
class Breaker:
    """Closed, then open for ``reset_s`` after ``failures`` failures in a row, then one trial call (half-open)."""

    failures: int
    reset_s: float
    consecutive: int = 0
    opened_at: float | None = None
    trial_running: bool = False

    def check(self) -> float | None:
        """None when a call may go ahead, else the seconds until the next trial."""
        if self.opened_at is None:
            return None
        remaining = self.opened_at + self.reset_s - time.monotonic()
        if remaining > 0 or self.trial_running:
            return max(remaining, 0.1)
        self.trial_running = True
        return None

    def record(self, ok: bool) -> None:
        self.trial_running = False
        if ok:
            self.consecutive, self.opened_at = 0, None
            return
        self.consecutive += 1
        if self.opened_at is not None or self.consecutive >= self.failures:
            self.opened_at = time.monotonic()


@dataclass
class UpstreamClient:
    name: str
    spec: Upstream
    session: aiohttp.ClientSession
    metrics: GatewayMetrics
    breaker: Breaker = field(init=False)
    healthy: bool | None = None
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self.breaker = Breaker(self.spec.breaker_failures, self.spec.breaker_reset_s)
        self.base = self.spec.url.rstrip("/")

    async def call(self, method: str, path_qs: str, headers: dict[str, str], body: bytes) -> tuple[int, Any, bytes]:
        wait = self.breaker.check()
        if wait is not None:
            raise UpstreamError(
                503, "circuit_open", f"upstream '{self.name}' is failing; circuit open for {wait:.1f} s", wait
            )
        self.metrics.breaker_open.labels(self.name).set(0)
        deadline = time.monotonic() + self.spec.timeout_s
        attempt = 0
        while True:
            try:
                result = await self._once(method, path_qs, headers, body, deadline)
            except UpstreamError as exc:
                retryable = exc.code == "upstream_unreachable"
                if not (retryable and attempt < self.spec.retries and self._sleep_fits(attempt, None, deadline)):
                    self._failed()
                    raise
                await self._backoff(attempt, None)
            else:
                status, response_headers, _ = result
                retry_after = _retry_after(response_headers) if status == 503 else None
                if (
                    retry_after is None
                    or attempt >= self.spec.retries
                    or not self._sleep_fits(attempt, retry_after, deadline)
                ):
                    self.breaker.record(status < 500)
                    if status >= 500:
                        self._mark_if_open()
                    return result
                await self._backoff(attempt, retry_after)
            attempt += 1
            self.metrics.retries.labels(self.name).inc()

    async def _once(
        self, method: str, path_qs: str, headers: dict[str, str], body: bytes, deadline: float
    ) -> tuple[int, Any, bytes]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise UpstreamError(
                504, "upstream_timeout", f"upstream '{self.name}' did not answer in {self.spec.timeout_s:g} s"
            )
        timeout = aiohttp.ClientTimeout(total=remaining, sock_connect=min(self.spec.connect_timeout_s, remaining))
        started = time.perf_counter()
        try:
            async with self.session.request(
                method, self.base + path_qs, headers=headers, data=body, timeout=timeout, allow_redirects=False
            ) as response:
                content = await response.read()
                self.metrics.upstream_latency.labels(self.name).observe(time.perf_counter() - started)
                return response.status, response.headers, content
        except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError, ConnectionError) as exc:
            # The request never reached the model (or the connection dropped before an answer): 502.
            raise UpstreamError(
                502, "upstream_unreachable", f"upstream '{self.name}' at {self.base} is unreachable: {exc}"
            ) from None
        except TimeoutError:
            raise UpstreamError(
                504, "upstream_timeout", f"upstream '{self.name}' did not answer in {self.spec.timeout_s:g} s"
            ) from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(502, "upstream_error", f"upstream '{self.name}' failed: {exc}") from None

    def _failed(self) -> None:
        self.breaker.record(False)
        self._mark_if_open()

    def _mark_if_open(self) -> None:
        self.metrics.breaker_open.labels(self.name).set(1 if self.breaker.opened_at is not None else 0)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        backoff = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2.0**attempt) * self.rng.uniform(0.5, 1.5)
        return max(backoff, min(retry_after, BACKOFF_CAP_S)) if retry_after is not None else backoff

    def _sleep_fits(self, attempt: int, retry_after: float | None, deadline: float) -> bool:
        return time.monotonic() + min(self._delay(attempt, retry_after), BACKOFF_CAP_S) < deadline

    async def _backoff(self, attempt: int, retry_after: float | None) -> None:
        await asyncio.sleep(self._delay(attempt, retry_after))

    async def check_health(self) -> bool:
        try:
            timeout = aiohttp.ClientTimeout(total=min(2.0, self.spec.timeout_s))
            async with self.session.get(self.base + self.spec.health_path, timeout=timeout) as response:
                await response.read()
                self.healthy = response.status == 200
        except (aiohttp.ClientError, TimeoutError, ConnectionError):
            self.healthy = False
        self.metrics.healthy.labels(self.name).set(1 if self.healthy else 0)
        return self.healthy


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        return None


class Gateway:
    """The proxy: route, forward to the chosen upstream, shadow off the client's path."""

    def __init__(self, routes: RoutesFile, settings: GatewaySettings) -> None:
        self.routes = routes
        self.settings = settings
        self.router = Router(routes)
        self.registry = CollectorRegistry()
        self.metrics = GatewayMetrics(self.registry)
        self.shadows = ShadowRunner(self.metrics)
        self.named = named_paths(routes.name)
        self.clients: dict[str, UpstreamClient] = {}
        self._health_task: asyncio.Task[None] | None = None
        self.tracing: Tracing | None = None
        if settings.tracing:  # OpenTelemetry is imported only when asked for
            from ferry.observability.tracing import Tracing

            self.tracing = Tracing.from_setting(settings.tracing, service="ferry-gateway")

    # -- ASGI: the lifespan, then one request at a time ----------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            request = await self._read(scope, receive)
            if isinstance(request, FerryError):
                reply = _json({"error": request.message, "code": request.code}, request.status)
            else:
                reply = await self.handle(request)
            await _send(send, reply)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        await receive()  # lifespan.startup
        # 1. One pooled session for every upstream; 2. health checks in the background.
        connector = aiohttp.TCPConnector(limit=self.settings.max_connections, ttl_dns_cache=60)
        session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        for target in self.routes.targets():
            upstream = self.routes.upstream_for(target)
            key = self._client_key(target)
            if key not in self.clients:
                self.clients[key] = UpstreamClient(key, upstream, session, self.metrics)
        self._health_task = asyncio.create_task(self._check_health_forever())
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        # 3. On shutdown: stop health checks, cancel shadows, then close the pool.
        self._health_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._health_task
        await self.shadows.close()
        await session.close()
        # 4. Export the spans still buffered.
        if self.tracing is not None:
            await asyncio.to_thread(self.tracing.shutdown)
        await send({"type": "lifespan.shutdown.complete"})

    async def _read(self, scope: Scope, receive: Receive) -> Request | FerryError:
        """The request with its whole body as sent (413 past ``--max-body-bytes``)."""
        limit = self.settings.max_body_bytes
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
            more = message.get("more_body", False)
        client = scope.get("client")
        return Request(
            scope["method"],
            scope["path"],
            scope.get("query_string", b"").decode("latin-1"),
            headers,
            client[0] if client else "",
            b"".join(chunks),
        )

    async def handle(self, request: Request) -> Reply:
        if request.path in LOCAL_PATHS and request.method in ("GET", "HEAD"):
            if request.path == "/health":
                return _json({"health": "ok"})
            if request.path == "/ready":
                return self.ready()
            return 200, {"content-type": "text/plain; charset=utf-8"}, generate_latest(self.registry)
        return await (self.proxy(request) if self.tracing is None else self.traced_proxy(request))

    def ready(self) -> Reply:
        states = {name: c.healthy for name, c in self.clients.items()}
        ready = all(states.values())
        return _json({"ready": ready, "upstreams": states}, 200 if ready else 503)

    def _client_key(self, target: Target) -> str:
        if target.model is None:
            return target.url or ""
        for key in (target.key, target.model):
            if key in self.routes.services:
                return key
        return target.model

    async def _check_health_forever(self) -> None:
        while True:
            await asyncio.gather(*(c.check_health() for c in self.clients.values()))
            await asyncio.sleep(self.settings.health_interval)

    async def proxy(self, request: Request) -> Reply:
        body, headers = request.body, request.headers
        parsed = self._parsed(request) if self.router.needs_body and body else None
        query = dict(parse_qsl(request.query_string, keep_blank_values=True))
        decision = self.router.decide(RouteRequest(request.path, headers, query, parsed))
        if decision is None:
            return _json({"error": f"no rule matches {request.method} {request.path}", "code": "no_route"}, 404)
        target, rule = decision.target, decision.rule
        self.metrics.routed.labels(rule, target.key).inc()
        # The body goes on as it came, under its own Content-Encoding: the upstream decompresses it once.
        forward = {k: v for k, v in headers.items() if k not in HOP_BY_HOP}
        forward["x-forwarded-for"] = request.client
        started = time.perf_counter()
        client = self.clients[self._client_key(target)]
        path_qs = self._path(request, target)
        headers = _with_model(forward, path_qs, target)
        try:
            status, response_headers, content = await self._call(client, request.method, path_qs, headers, body, rule)
        except UpstreamError as exc:
            self.metrics.requests.labels(client.name, str(exc.status)).inc()
            extra = {"Retry-After": str(max(1, round(exc.retry_after)))} if exc.retry_after is not None else None
            payload = {"error": exc.message, "code": exc.code, "upstream": client.name}
            return _json(payload, exc.status, extra)
        latency = time.perf_counter() - started
        self.metrics.requests.labels(client.name, str(status)).inc()
        self.metrics.latency.labels(decision.rule, "primary", target.key).observe(latency)
        shadow = decision.shadow
        if shadow is not None and status == 200:
            shadow_client = self.clients[self._client_key(shadow)]
            shadow_path = self._path(request, shadow)
            shadow_headers = _with_model(forward, shadow_path, shadow)

            async def call() -> tuple[int, bytes]:
                code, _, answer = await self._call(
                    shadow_client, request.method, shadow_path, shadow_headers, body, rule
                )
                return code, answer

            route = decision.route
            job = ShadowJob(decision.rule, shadow.key, content, latency, route.shadow_timeout_s, route.compare)
            self.shadows.submit(job, call)
        out_headers = {k.lower(): v for k, v in response_headers.items() if k.lower() not in HOP_BY_HOP}
        out_headers["x-ferry-route"], out_headers["x-ferry-target"] = decision.rule, target.key
        return status, out_headers, content

    def _parsed(self, request: Request) -> Any:
        """The body as JSON for the rules that read it, decompressed if it came so; None when it is not JSON."""
        body = request.body
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        try:
            if encoding != "identity":
                body = decompress(body, encoding.encode("latin-1"), self.settings.max_body_bytes)
            return orjson.loads(body)
        except (ValueError, FerryError):
            return None  # body conditions do not match; the upstream answers for the body itself

    async def traced_proxy(self, request: Request) -> Reply:
        """``proxy`` inside a server span that continues the client's trace (``--tracing``)."""
        assert self.tracing is not None
        attributes = {"http.request.method": request.method, "url.path": request.path}
        with self.tracing.server_span(f"gateway {request.method}", request.headers, attributes) as span:
            reply = await self.proxy(request)
            span.status(reply[0])
            return reply

    async def _call(
        self, client: UpstreamClient, method: str, path_qs: str, headers: dict[str, str], body: bytes, rule: str
    ) -> tuple[int, Any, bytes]:
        """Call an upstream; with tracing on, in a client span whose context replaces the client's traceparent."""
        if self.tracing is None:
            return await client.call(method, path_qs, headers, body)
        attributes = {
            "http.request.method": method,
            "url.full": client.base + path_qs.partition("?")[0],
            "ferry.upstream": client.name,
            "ferry.route.rule": rule,
        }
        with self.tracing.client_span(f"upstream {client.name}", headers, attributes) as span:
            result = await client.call(method, path_qs, span.headers, body)
            span.status(result[0])
            return result

    def _path(self, request: Request, target: Target) -> str:
        path = rewrite_path(self.named, request.path, target) or request.path
        return path + (f"?{request.query_string}" if request.query_string else "")


def _with_model(forward: dict[str, str], path_qs: str, target: Target) -> dict[str, str]:
    """``forward`` with ``x-ferry-model`` set to the model the upstream serves, for a sharded deployment's hash.

    The model named in the forwarded path wins, then the target's model (a root route such as ``/predict``);
    when neither names one, a header the client sent is passed on as it came.
    """
    model = model_from_path(path_qs.partition("?")[0]) or target.model
    if model is None:
        return forward
    headers = {k: v for k, v in forward.items() if k.lower() != MODEL_HEADER}
    headers[MODEL_HEADER] = model_header_value(model)
    return headers


@dataclass(frozen=True)
class Request:
    """A client's request, read whole; header names lowercased (as HTTP/1.1 servers hand them)."""

    method: str
    path: str
    query_string: str
    headers: Headers
    client: str
    body: bytes


Reply = tuple[int, Any, bytes]  # status, headers (a mapping), body


def _json(content: Any, status: int = 200, headers: Headers | None = None) -> Reply:
    return status, {"content-type": "application/json", **(headers or {})}, orjson.dumps(content)


async def _send(send: Send, reply: Reply) -> None:
    status, headers, body = reply
    raw = [(k.encode("latin-1"), str(v).encode("latin-1")) for k, v in headers.items()]
    raw.append((b"content-length", b"%d" % len(body)))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def client_cap(settings: GatewaySettings) -> int:
    """``--max-client-connections``, kept below the descriptors this process may open (its soft limit raised
    to the hard one first), so clients alone never run the gateway out of them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    room = soft - settings.max_connections - FD_RESERVE
    cap = max(1, min(settings.max_client_connections, room))
    if cap < settings.max_client_connections:
        logger.warning(
            "--max-client-connections %d lowered to %d: the process may open %d files, %d of them kept for "
            "upstream connections and %d for the rest",
            settings.max_client_connections,
            cap,
            soft,
            settings.max_connections,
            FD_RESERVE,
        )
    return cap


def gateway_config(gateway: Gateway, settings: GatewaySettings, **uvicorn_options: Any) -> uvicorn.Config:
    """uvicorn serving ``gateway`` through Ferry's bounded connections, as ``ferry serve`` does."""
    limits = ConnectionLimits.from_settings(
        Settings(),  # the server's defaults, but for what the gateway sets itself
        head_timeout=settings.header_timeout,
        body_read_timeout=settings.body_read_timeout,
        min_body_rate=settings.min_body_rate,
        max_connections=client_cap(settings),
    )
    return FerryConfig(
        gateway,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=BoundedHttpProtocol,
        ws="none",
        lifespan="on",
        access_log=False,
        connection_limits=limits,
        **uvicorn_options,
    )


def run_gateway(routes: RoutesFile, settings: GatewaySettings) -> None:
    server = uvicorn.Server(gateway_config(Gateway(routes, settings), settings))
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
