"""The HTTP app over a data plane: ``build_app(settings, plane)``; ``create_app(settings, registry)`` builds the plane
too, for an app served alone (``ferry.server.compose`` builds one plane and hands it to HTTP, gRPC and the probes)."""

from __future__ import annotations

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
from ferry.serving.metrics import Metrics
from ferry.serving.plane import Background, Plane
from ferry.serving.registry import ModelRegistry
from ferry.settings import Settings

if TYPE_CHECKING:
    from ferry.http.routing import RouterStep

logger = logging.getLogger("ferry.http")


def create_app(settings: Settings, registry: ModelRegistry | None = None) -> FerryApp:
    """The HTTP app over a data plane of its own (``ferry.server.compose`` hands one to each transport)."""
    return build_app(settings, plane_from_settings(settings, registry))


def plane_from_settings(settings: Settings, registry: ModelRegistry | None = None) -> Plane:
    """The worker's data plane, every limit from ``settings``, with tracing and the prediction log where asked for."""
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
    return Plane.build(settings, registry, metrics, tracing, prediction_log)


def plane_tasks(settings: Settings, plane: Plane) -> list[Background]:
    """What runs beside the plane while it serves: model states into metrics, and with --watch the bundles."""
    registry = plane.registry

    async def model_states() -> None:
        await ModelWatcher(registry, plane.metrics).run()

    async def bundles() -> None:
        await watch(registry)

    return [model_states, bundles] if settings.watch else [model_states]


def build_app(settings: Settings, plane: Plane, serves_plane: bool = True) -> FerryApp:
    """HTTP over ``plane``: the route table, the request pipeline, and HTTP's lifespan, which runs the plane's too
    unless ``serves_plane`` is False (``ferry.server.compose.Server`` runs the plane for every transport)."""
    registry, metrics, tracing = plane.registry, plane.metrics, plane.tracing
    endpoints = ModelEndpoints(plane.queries)
    routing = _routing(settings, registry, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        install_drain_handler(registry)  # SIGTERM: readiness turns 503 while in-flight requests finish
        serving = plane.lifespan(plane_tasks(settings, plane)) if serves_plane else contextlib.nullcontext()
        async with serving:
            try:
                yield
            finally:
                if routing is not None:  # (the routes file's upstream clients)
                    await routing.close()

    routes = endpoints.routes() + ProtocolEndpoints(endpoints).routes() + docs.routes(registry, plane.data.explanation)
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
    app.state.registry = registry  # (tests, and the parent of --workers N, load it)
    app.state.plane = plane
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
    dispatch = Dispatch(plane.data, predict_routes, app, settings.max_body_bytes)
    pipeline = Pipeline(steps, dispatch, _serves(predict_routes, routing))
    limits = (settings.max_body_bytes, settings.body_timeout)
    return FerryApp(app, plane.data, pipeline, context, auth_step, predict_routes, limits)


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
