"""Thin endpoints for the native API: decode, call the service layer, encode."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ferry.errors import FerryError, InvalidInput
from ferry.http.responses import error_response, json_response, read_body
from ferry.protocol.native import decode_native, encode_native, parse_json
from ferry.serving.metrics import Metrics
from ferry.serving.registry import ModelHandle, ModelRegistry
from ferry.serving.service import InferenceService
from ferry.settings import Settings

Endpoint = Callable[[Request], Awaitable[Response]]


class ModelEndpoints:
    def __init__(self, settings: Settings, registry: ModelRegistry, service: InferenceService, metrics: Metrics):
        self.settings = settings
        self.registry = registry
        self.service = service
        self.metrics = metrics

    def routes(self) -> list[Route]:
        per_model = [
            ("/metadata", self.metadata, ["GET"]),
            ("/labels", self.labels, ["GET"]),
            ("/predict", self.predict, ["POST"]),
            ("/predict/test", self.predict_test, ["GET"]),
            ("/health", self.model_health, ["GET"]),
        ]
        routes = [
            Route("/health", self.health, methods=["GET"]),
            Route("/ready", self.ready, methods=["GET"]),
            Route("/models", self.models, methods=["GET"]),
            Route("/metrics", self.metrics_text, methods=["GET"]),
        ]
        for suffix, handler, methods in per_model:
            wrapped = self.instrument(f"model{suffix}", handler)
            routes.append(Route("/models/{name}" + suffix, wrapped, methods=methods))
            routes.append(Route("/models/{name}/versions/{version}" + suffix, wrapped, methods=methods))
        return routes

    def instrument(self, route: str, handler: Endpoint, protocol: str = "native") -> Endpoint:
        """Count and time a per-model route; turn any error into its JSON response."""

        async def endpoint(request: Request) -> Response:
            start = time.perf_counter()
            model = request.path_params.get("name", "")
            try:
                response = await handler(request)
            except Exception as exc:
                response = error_response(exc)
                code = exc.code if isinstance(exc, FerryError) else "internal"
                self.metrics.errors.labels(self._model_label(model), code).inc()
            label = self._model_label(model)
            self.metrics.requests.labels(label, route, protocol, str(response.status_code)).inc()
            self.metrics.latency.labels(label, route).observe(time.perf_counter() - start)
            return response

        return endpoint

    def _model_label(self, name: str) -> str:
        # Bounded cardinality: an unknown name from a client is never a label value.
        return name if name in self.registry.models else "_unknown"

    def handle(self, request: Request) -> ModelHandle:
        return self.registry.get(request.path_params["name"], request.path_params.get("version"))

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
            try:
                default: str | None = self.registry.get(name).version
            except FerryError:
                default = None
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
        return json_response(model_metadata(self.handle(request), self.registry))

    async def labels(self, request: Request) -> Response:
        handle = self.handle(request)
        assert handle.model is not None
        return json_response({"labels": handle.model.manifest.labels or []})

    async def model_health(self, request: Request) -> Response:
        handle = self.handle(request)
        return json_response({"health": "ok", "name": handle.name, "version": handle.version})

    async def predict(self, request: Request) -> Response:
        handle = self.handle(request)
        payload = parse_json(await read_body(request, self.settings.max_body_bytes, self.settings.body_timeout))
        timeout = parse_timeout(request.headers.get("x-request-timeout"))
        return json_response(await self.predict_payload(handle, payload, timeout))

    async def predict_test(self, request: Request) -> Response:
        handle = self.handle(request)
        assert handle.model is not None
        sample = handle.model.manifest.sample_input
        if sample is None:
            raise InvalidInput("this bundle has no sample input", "sample_input")
        result = await self.predict_payload(handle, sample)
        return json_response({"input": sample, **result})

    async def predict_payload(self, handle: ModelHandle, payload: Any, timeout: float | None = None) -> dict[str, Any]:
        """Native JSON in, native JSON out, through the shared service layer."""
        assert handle.codec is not None and handle.model is not None
        batch, single = decode_native(payload, handle.codec)
        prediction = await self.service.predict(handle, batch, timeout)
        return encode_native(prediction, single, handle.model.manifest.labels)


def warm_up(handle: ModelHandle) -> None:
    """Run the bundle's sample input through the model once, timing the call; raise if it fails."""
    assert handle.model is not None and handle.codec is not None
    sample = handle.model.manifest.sample_input
    if sample is None:
        return
    try:
        batch, _ = decode_native(sample, handle.codec)
        started = time.perf_counter()
        handle.model.runtime.predict(batch)
        handle.compute_s = time.perf_counter() - started
    except FerryError as exc:
        raise ModelWarmupFailed(f"warm-up on the sample input failed: {exc.message}") from exc
    except Exception as exc:
        raise ModelWarmupFailed(f"warm-up on the sample input failed: {type(exc).__name__}: {exc}") from exc


class ModelWarmupFailed(FerryError):
    code = "warmup_failed"


MAX_TIMEOUT_S = 300.0


def parse_timeout(value: str | bytes | None) -> float | None:
    """``X-Request-Timeout``: seconds (``0.5``) or milliseconds (``500ms``), at most 300 s."""
    if value is None:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    text = text.strip().lower()
    try:
        seconds = float(text[:-2]) / 1000.0 if text.endswith("ms") else float(text.removesuffix("s"))
    except ValueError:
        raise InvalidInput(
            f"X-Request-Timeout must be seconds or milliseconds, got '{text[:20]}'", "X-Request-Timeout"
        ) from None
    if not 0 < seconds <= MAX_TIMEOUT_S:
        raise InvalidInput(f"X-Request-Timeout must be in (0, {MAX_TIMEOUT_S:g}] seconds", "X-Request-Timeout")
    return seconds


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
        "metadata": manifest.metadata,
    }
