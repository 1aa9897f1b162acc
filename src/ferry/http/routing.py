"""``ferry serve --routes``: the routes file applied in front of the server's own models, a request pipeline step.

A routed request is one addressed to the router's own name (``/models/{name}/...``,
``/v2/models/{name}/...``, ``/v1/models/{name}:predict``, ``/seldon/{name}/...``) or to a
root compatibility route such as ``/predict``. Its model is swapped for the chosen target, then it
goes on to the same dispatch as any request, so every HTTP protocol is routed the same way.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qsl

from ferry.errors import RoutesError
from ferry.http.pipeline import Exchange, Handler, Reply, error_reply
from ferry.http.responses import whole_body
from ferry.protocol.native import parse_json
from ferry.routing.router import Decision, Router, RouteRequest, named_paths, rewrite_path
from ferry.routing.shadow import RoutingMetrics, ShadowJob, ShadowRunner
from ferry.routing.spec import RoutesFile, Target
from ferry.serving.dataplane import report

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_BODY_HEADERS = frozenset({b"content-encoding", b"content-length", b"transfer-encoding"})  # of the body as sent


class RouterStep:
    """Decide, rewrite, hand on to the local dispatch; then, off the client's path, run the shadow."""

    def __init__(
        self,
        routes: RoutesFile,
        metrics: RoutingMetrics,
        compat_paths: set[str],
        max_body_bytes: int,
    ) -> None:
        for target in routes.targets():
            if target.url is not None:
                raise RoutesError(f"target {target.url}: `ferry serve` routes to its own models; use `ferry gateway`")
        self.router = Router(routes)
        self.metrics = metrics
        self.shadows = ShadowRunner(metrics)
        self.name = routes.name
        self.compat_paths = compat_paths
        self.limit = max_body_bytes
        self._named = named_paths(routes.name)
        self._header_names = self.router.header_names
        self._meters: dict[tuple[str, str], tuple[Any, Any, tuple[tuple[bytes, bytes], ...]]] = {}

    def serves(self, path: str) -> bool:
        """Whether ``path`` is routed: the router's own name, or a root compatibility route."""
        return self._named.match(path) is not None or path in self.compat_paths

    async def __call__(self, exchange: Exchange, after: Handler) -> Reply:
        if not self.serves(exchange.path):
            return await after(exchange)
        try:
            if exchange.method in _BODY_METHODS:
                sent = exchange.whole_body()
                body = whole_body(exchange.headers, sent, self.limit)
                if body is not sent:  # decompressed
                    exchange = _as_read(exchange, body)
            decision = self.router.decide(self._request(exchange))
        except Exception as exc:
            return error_reply(report(exc))
        if decision is None:
            return await after(exchange)
        return await self._route(exchange, decision, after)

    def _request(self, exchange: Exchange) -> RouteRequest:
        names = self._header_names
        headers = {}
        for key, value in exchange.headers:
            name = key.decode("latin-1")
            if name in names:
                headers[name] = value.decode("latin-1")
        query = dict(parse_qsl(exchange.query.decode("latin-1"), keep_blank_values=True)) if exchange.query else {}
        parsed, body = None, exchange.body
        if self.router.needs_body and body:
            try:
                parsed = parse_json(body)
            except Exception:
                parsed = None  # not JSON: body conditions simply do not match; the endpoint reports the error
        return RouteRequest(exchange.path, headers, query, parsed)

    async def _route(self, exchange: Exchange, decision: Decision, after: Handler) -> Reply:
        target = decision.target
        meters = self._meters.get((decision.rule, target.key))
        if meters is None:
            meters = self._meters[decision.rule, target.key] = self._labelled(decision.rule, target.key)
        routed, primary_latency, tags = meters
        routed.inc()
        started = time.perf_counter()
        reply = await after(self._rewrite(exchange, target))
        latency = time.perf_counter() - started
        reply.headers += tags
        primary_latency.observe(latency)
        shadow = decision.shadow
        if shadow is not None and reply.status == 200:
            shadowed = self._rewrite(exchange, shadow)

            async def call() -> tuple[int, bytes]:
                answer = await after(shadowed)
                return answer.status, answer.body

            route = decision.route
            job = ShadowJob(decision.rule, shadow.key, reply.body, latency, route.shadow_timeout_s, route.compare)
            self.shadows.submit(job, call)
        return reply

    def _labelled(self, rule: str, key: str) -> tuple[Any, Any, tuple[tuple[bytes, bytes], ...]]:
        """A (rule, target)'s counter and latency, labelled once (``labels`` costs microseconds), and its headers."""
        tags = ((b"x-ferry-route", rule.encode()), (b"x-ferry-target", key.encode()))
        return self.metrics.routed.labels(rule, key), self.metrics.latency.labels(rule, "primary", key), tags

    def _rewrite(self, exchange: Exchange, target: Target) -> Exchange:
        path = rewrite_path(self._named, exchange.path, target)
        if path is None:  # a root compatibility route: the dispatch reads the model from the exchange
            return exchange.but(routed=(target.model or "", target.version))  # (a target here names a model: no url)
        return exchange.but(path=path)

    async def close(self) -> None:
        await self.shadows.close()


def _as_read(exchange: Exchange, body: bytes) -> Exchange:
    """The exchange with its body as read: decompressed, so the dispatch must not decompress it a second time."""
    headers = [(k, v) for k, v in exchange.headers if k not in _BODY_HEADERS]
    headers.append((b"content-length", b"%d" % len(body)))
    return exchange.but(headers=headers, body=body)
