"""The app factory: ``create_app(settings, registry)`` wires endpoints over the service layer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from ferry.http import compat
from ferry.http.endpoints import ModelEndpoints
from ferry.http.responses import error_response, json_response
from ferry.serving.metrics import Metrics
from ferry.serving.registry import ModelRegistry
from ferry.serving.service import InferenceService
from ferry.settings import Settings

logger = logging.getLogger("ferry.http")


def create_app(settings: Settings, registry: ModelRegistry | None = None) -> Starlette:
    registry = registry or ModelRegistry(settings.repo, trust_pickle=settings.trust_pickle)
    metrics = Metrics()
    service = InferenceService(registry, metrics, threads=settings.model_threads)
    endpoints = ModelEndpoints(settings, registry, service, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # 1. Load every bundle off the event loop, so /health answers while models load.
        loading = asyncio.create_task(asyncio.to_thread(registry.load_all))
        yield
        # 2. On shutdown, let the load finish (a thread cannot be cancelled), then release the pool.
        await loading
        service.close()

    routes = endpoints.routes() + compat.routes(registry, endpoints)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        message = f"no route {request.method} {request.url.path}" if exc.status_code == 404 else exc.detail
        return json_response({"error": message, "code": f"http_{exc.status_code}"}, exc.status_code)

    async def internal_error(request: Request, exc: Exception) -> Response:
        return error_response(exc)

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error, Exception: internal_error},
    )
    app.state.registry = registry
    app.state.service = service
    return app


def create_app_from_env() -> Starlette:
    """Entry point for uvicorn worker processes: settings arrive as FERRY_* variables."""
    return create_app(Settings.from_env())
