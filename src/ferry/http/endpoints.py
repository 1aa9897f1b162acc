"""The native API's other routes: health, readiness, the model list, metrics and per-model metadata.

Predicting is not here: every predict route of every protocol is served by ``ferry.http.dispatch``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ferry.errors import ModelNotReady
from ferry.http.mounting import mount
from ferry.http.responses import error_http, json_response
from ferry.runtimes.explain import explanation_of
from ferry.serving.budget import MemoryBudget
from ferry.serving.dataplane import UNKNOWN_MODEL, report
from ferry.serving.metrics import Metrics
from ferry.serving.registry import ModelHandle, ModelRegistry, ModelState

Endpoint = Callable[[Request], Awaitable[Response]]


class ModelEndpoints:
    def __init__(self, registry: ModelRegistry, metrics: Metrics, budget: MemoryBudget | None = None):
        self.registry = registry
        self.metrics = metrics
        self.budget = budget  # --max-memory: a route that reads the model loads it first

    def routes(self) -> list[Route]:
        """The ``endpoints`` rows of the route table; ``GET /ping`` is MLflow's readiness probe."""
        handlers: dict[str, Endpoint] = {
            "health": self.health,
            "ready": self.ready,
            "models": self.models,
            "metrics": self.metrics_text,
        }
        per_model = {"model/metadata": self.metadata, "model/labels": self.labels, "model/health": self.model_health}
        for route, handler in per_model.items():
            handlers[route] = self.instrument(route, handler)
        return mount("endpoints", handlers)

    def instrument(self, route: str, handler: Endpoint, protocol: str = "native") -> Endpoint:
        """Count and time a per-model route; turn any error into its JSON response."""

        async def endpoint(request: Request) -> Response:
            start = time.perf_counter()
            model = request.path_params.get("name", "")
            label = self._model_label(model)
            try:
                response = await handler(request)
            except Exception as exc:
                response = error_http(report(exc, self.metrics, label))
            self.metrics.requests.labels(label, route, protocol, str(response.status_code)).inc()
            self.metrics.latency.labels(label, route).observe(time.perf_counter() - start)
            return response

        return endpoint

    def _model_label(self, name: str) -> str:
        # Bounded cardinality: an unknown name from a client is never a label value.
        return name if name in self.registry.models else UNKNOWN_MODEL

    async def handle(self, request: Request) -> ModelHandle:
        """The model version a request names, loaded (under ``--max-memory`` an unloaded one loads now)."""
        name, version = request.path_params["name"], request.path_params.get("version")
        if self.budget is None:
            return self.registry.get(name, version)
        handle = await self.budget.acquire(name, version)
        self.budget.release(handle)  # read at once, with no await between: it cannot be unloaded meanwhile
        return handle

    def available(self, request: Request) -> ModelHandle:
        """The model version a request names, ready to serve (under ``--max-memory``, UNLOADED is), unloaded."""
        name, version = request.path_params["name"], request.path_params.get("version")
        if self.budget is None:
            return self.registry.get(name, version)
        handle = self.registry.lookup(name, version)
        if handle.state is ModelState.FAILED:
            raise ModelNotReady(f"model '{name}' version '{handle.version}' is FAILED")
        return handle

    # -- server-wide -------------------------------------------------------------------------------
    async def health(self, request: Request) -> Response:
        return json_response({"health": "ok"})

    async def ready(self, request: Request) -> Response:
        ready = self.registry.is_ready()
        body: dict[str, Any] = {"ready": ready, "models": [h.describe() for h in self.registry.handles()]}
        if self.registry.draining:
            body["draining"] = True
        return json_response(body, 200 if ready else 503)

    async def models(self, request: Request) -> Response:
        listing = []
        for name, versions in self.registry.models.items():
            default = self.registry.default_version(name)
            listing.append(
                {
                    "name": name,
                    "default_version": default,
                    "versions": [h.describe() for h in versions.values()],
                }
            )
        return json_response({"models": listing})

    async def metrics_text(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    # -- per model ---------------------------------------------------------------------------------
    async def metadata(self, request: Request) -> Response:
        return json_response(model_metadata(await self.handle(request), self.registry))

    async def labels(self, request: Request) -> Response:
        handle = await self.handle(request)
        assert handle.model is not None
        return json_response({"labels": handle.model.manifest.labels or []})

    async def model_health(self, request: Request) -> Response:
        handle = self.available(request)
        return json_response({"health": "ok", "name": handle.name, "version": handle.version})


def model_metadata(handle: ModelHandle, registry: ModelRegistry) -> dict[str, Any]:
    assert handle.model is not None
    manifest = handle.model.manifest
    return {
        "name": manifest.name,
        "version": manifest.version,
        "versions": list(registry.models[handle.name]),
        "runtime": manifest.runtime,
        "input": msgspec.to_builtins(manifest.input),
        "output": msgspec.to_builtins(manifest.output),
        "labels": manifest.labels,
        "sample_input": manifest.sample_input,
        "expected_output": manifest.expected_output,
        "metadata": manifest.metadata,
        "explanation": explanation_of(handle.model.runtime, manifest.runtime),  # POST .../explain: how, or why not
    }
