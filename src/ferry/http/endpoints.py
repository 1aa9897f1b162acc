"""The native API's other routes: health, readiness, the model list, metrics and per-model metadata.

Predicting is not here: every predict route of every protocol is served by ``ferry.http.dispatch``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ferry.errors import FerryError
from ferry.http.mounting import mount
from ferry.http.responses import error_http, json_response
from ferry.serving.models import ModelQueries
from ferry.serving.registry import ModelHandle, ModelRegistry

Endpoint = Callable[[Request], Awaitable[Response]]


class ModelEndpoints:
    """HTTP's encoding of ``ModelQueries``' answers (native routes); ``instrument`` meters them through it."""

    def __init__(self, queries: ModelQueries):
        self.queries = queries
        self.registry = queries.registry
        self.metrics = queries.plane.metrics

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
        """A per-model route, metered by ``ModelQueries.ask``; any error becomes its JSON response."""
        ask = self.queries.ask

        async def endpoint(request: Request) -> Response:
            model = request.path_params.get("name", "")
            try:
                return await ask(protocol, route, model, lambda: handler(request), _status)
            except FerryError as error:  # reported and counted by ask
                return error_http(error)

        return endpoint

    async def handle(self, request: Request) -> ModelHandle:
        """The model version a request names, loaded (under ``--max-memory`` an unloaded one loads now)."""
        return await self.queries.loaded(request.path_params["name"], request.path_params.get("version"))

    def available(self, request: Request) -> ModelHandle:
        """The model version a request names, ready to serve (under ``--max-memory``, UNLOADED is), unloaded."""
        return self.queries.available(request.path_params["name"], request.path_params.get("version"))

    # -- server-wide -------------------------------------------------------------------------------
    async def health(self, request: Request) -> Response:
        return json_response({"health": "ok"})

    async def ready(self, request: Request) -> Response:
        readiness = self.queries.readiness()
        return json_response(readiness.body(), 200 if readiness.ready else 503)

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
        handle = await self.handle(request)
        return json_response(model_metadata(handle, self.registry, self.queries.plane.explanation(handle)))

    async def labels(self, request: Request) -> Response:
        labels = await self.queries.labels(request.path_params["name"], request.path_params.get("version"))
        return json_response({"labels": labels})

    async def model_health(self, request: Request) -> Response:
        handle = self.available(request)
        return json_response({"health": "ok", "name": handle.name, "version": handle.version})


def model_metadata(handle: ModelHandle, registry: ModelRegistry, explanation: dict[str, Any]) -> dict[str, Any]:
    """The native metadata of a loaded version (``ModelQueries.loaded``); ``explanation`` is how POST .../explain
    answers, or why it cannot (``DataPlane.explanation``)."""
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
        "explanation": explanation,
    }


def _status(response: Response | None, error: FerryError | None) -> str:
    """HTTP's ``status`` label: the response's code, or the error's."""
    return str(error.status if error is not None else response.status_code if response is not None else 500)
