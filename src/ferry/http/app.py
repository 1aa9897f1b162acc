"""The app factory: ``create_app(settings, registry)`` wires endpoints over the service layer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ferry.auth import TokenAuth
from ferry.errors import FerryError
from ferry.http import compat, docs
from ferry.http.admin import AdminEndpoints, watch
from ferry.http.dispatch import Dispatch, FerryApp, PredictRoutes
from ferry.http.endpoints import Endpoint, ModelEndpoints
from ferry.http.lifecycle import install_drain_handler
from ferry.http.mounting import mount
from ferry.http.pipeline import AuthStep, ContextStep, Pipeline, Step, TracingStep
from ferry.http.protocols import ProtocolEndpoints
from ferry.http.responses import error_http, error_response, json_response
from ferry.observability.access import RequestContext
from ferry.observability.watcher import ModelWatcher
from ferry.protocol.native import native_warm_up
from ferry.serving.budget import MemoryBudget, parse_size
from ferry.serving.dataplane import DataPlane
from ferry.serving.metrics import Metrics
from ferry.serving.models import ModelQueries
from ferry.serving.registry import ModelRegistry
from ferry.serving.service import InferenceService
from ferry.settings import Settings

if TYPE_CHECKING:
    from ferry.http.routing import RouterStep

logger = logging.getLogger("ferry.http")


def create_app(settings: Settings, registry: ModelRegistry | None = None) -> FerryApp:
    registry = registry or ModelRegistry(
        settings.repo,
        trust_pickle=settings.trust_pickle,
        warmup=native_warm_up(),
        original=settings.original_models,
        trust_code=settings.trust_code,
        lazy=bool(settings.max_memory),
        trial_timeout=settings.trial_timeout,
    )
    metrics = Metrics.from_env()  # multiprocess mode when the CLI set PROMETHEUS_MULTIPROC_DIR for --workers
    tracing = None
    if settings.tracing:  # OpenTelemetry is imported only here, when asked for
        from ferry.observability.tracing import Tracing

        tracing = Tracing.from_setting(settings.tracing)
    prediction_log = None
    if settings.prediction_log:
        from ferry.observability.predlog import PredictionLog

        prediction_log = PredictionLog(settings.prediction_log, metrics, settings.prediction_log_max_bytes)
    service = InferenceService(
        registry,
        metrics,
        threads=settings.model_threads,
        request_timeout=settings.request_timeout,
        max_queue=settings.max_queue,
        prediction_log=prediction_log,
        tracer=tracing,
        max_rows=settings.max_rows or None,
        max_pixels=settings.max_pixels or None,
    )
    budget = None
    if settings.max_memory:
        budget = MemoryBudget(registry, parse_size(settings.max_memory), settings.preload, service.forget)
    sampled = frozenset(filter(None, (n.strip() for n in settings.explain_sampled.split(","))))
    plane = DataPlane(registry, service, metrics, settings.request_timeout, budget, sampled)
    queries = ModelQueries(plane)  # readiness, metadata and labels, for every transport (ferry.server.worker)
    endpoints = ModelEndpoints(queries)
    routing = _routing(settings, registry, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        install_drain_handler(registry)
        # 1. Load every bundle off the event loop, so /health answers while models load.
        #    With --max-memory, verify the index instead, then load on demand (or preload what fits).
        loading = asyncio.create_task(budget.start() if budget else asyncio.to_thread(registry.load_all))
        if settings.workers > 1:
            # Workers share one listening socket: a (re)started worker starts accepting only once its
            # models are loaded and warm, so the others keep taking the traffic meanwhile.
            await loading
        watcher = asyncio.create_task(watch(registry)) if settings.watch else None
        sampler = asyncio.create_task(ModelWatcher(registry, metrics).run())  # model states and gauges into metrics
        yield
        sampler.cancel()
        if watcher is not None:
            watcher.cancel()
        # 2. On shutdown (gRPC, served beside this app, has stopped already), let the load finish (a thread
        #    cannot be cancelled; --max-memory's preload stops at the next model), then release the pool.
        if budget is not None:
            loading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loading
        service.close()
        if routing is not None:
            await routing.close()
        if prediction_log is not None:
            prediction_log.close()
        # 3. Export the spans still buffered.
        if tracing is not None:
            await asyncio.to_thread(tracing.shutdown)

    routes = endpoints.routes() + ProtocolEndpoints(endpoints).routes() + docs.routes(registry)
    compat_at = len(routes)  # the compatibility routes go here: after the built-in ones, before the root
    if settings.admin:
        routes += AdminEndpoints(registry).routes()
    page = None
    if settings.console:
        from ferry.http import console

        routes += console.routes(metrics)
        page = console.console
    routes += mount("root", {"root": _root(page)})
    # Which routes need no token: the route table says, from the routes the app serves (ferry.auth).
    served = {route.path for route in routes if isinstance(route, Route)}
    predict_routes = PredictRoutes(registry, mounted=compat.health_routes(registry), served=served - {"/"})
    auth = TokenAuth.from_settings(settings.auth_tokens, settings.auth_tokens_file, public=predict_routes.public)
    if settings.admin and auth is None:
        logger.warning("--admin-unauthenticated: the admin routes are open to anyone who reaches this port")
    routes[compat_at:compat_at] = compat.routes(registry)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        message = f"no route {request.method} {request.url.path}" if exc.status_code == 404 else exc.detail
        error = FerryError(message)
        error.status, error.code = exc.status_code, f"http_{exc.status_code}"
        error.headers = dict(exc.headers) if exc.headers else None
        return error_http(error)

    async def internal_error(request: Request, exc: Exception) -> Response:
        return error_response(exc)

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error, Exception: internal_error},
    )
    app.state.registry = registry
    app.state.service = service
    app.state.queries = queries
    app.state.tracing = tracing  # for gRPC, started beside this app by ``ferry.server.transports``
    # The request pipeline, in order; each step is absent when its setting is off, so it costs nothing.
    context = RequestContext(settings.access_log)
    auth_step = AuthStep(auth) if auth is not None else None
    steps: list[Step] = [ContextStep(context)]
    if tracing is not None:
        steps.append(TracingStep(tracing))
    if auth_step is not None:
        steps.append(auth_step)
    if routing is not None:
        steps.append(routing)
    dispatch = Dispatch(plane, predict_routes, app, settings.max_body_bytes)
    pipeline = Pipeline(steps, dispatch, _serves(predict_routes, routing))
    limits = (settings.max_body_bytes, settings.body_timeout)
    return FerryApp(app, plane, pipeline, context, auth_step, predict_routes, limits)


def _serves(routes: PredictRoutes, routing: RouterStep | None) -> Callable[[str, str], bool]:
    """The requests the pipeline serves: the predict routes, and with ``--routes`` the routed paths too."""
    if routing is None:
        return routes.predicts

    def serves(method: str, path: str) -> bool:
        return routing.serves(path) or routes.predicts(method, path)

    return serves


def _root(console: Endpoint | None) -> Endpoint:
    """``GET /``: the console to a browser (``Accept: text/html``), KServe's liveness answer to anyone else."""

    async def root(request: Request) -> Response:
        if console is not None and "text/html" in request.headers.get("accept", ""):
            return await console(request)
        return json_response({"status": "alive"})

    return root


def _routing(settings: Settings, registry: ModelRegistry, metrics: Metrics) -> RouterStep | None:
    """The ``--routes`` router, or None; a bad routes file stops start-up with the rule and field named."""
    if not settings.routes:
        return None
    from ferry.http.routing import RouterStep
    from ferry.routing.shadow import RoutingMetrics
    from ferry.routing.spec import load_routes

    routes = load_routes(settings.routes)
    return RouterStep(routes, RoutingMetrics(metrics.registry), compat.paths(registry), settings.max_body_bytes)
