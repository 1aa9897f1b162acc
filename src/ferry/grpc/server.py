"""``inference.GRPCInferenceService`` on grpc.aio, in the REST server's event loop, over ``DataPlane.infer``.

Each call's request arrives as bytes, so its size is known before anything is parsed: the bytes of
the calls being handled at once are bounded by ``--max-inflight-bytes``, as HTTP bounds its bodies.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]

from ferry.auth import TokenAuth
from ferry.errors import FerryError, InvalidInput, Overloaded, Unauthorized
from ferry.grpc import inference_pb2 as pb
from ferry.grpc import inference_pb2_grpc as pb_grpc
from ferry.grpc.codec import GRPC_CODEC, status_code
from ferry.protocol import v2
from ferry.serving.dataplane import UNKNOWN_MODEL, DataPlane, report
from ferry.serving.registry import ModelState

if TYPE_CHECKING:
    from ferry.observability.tracing import Tracing
    from ferry.serving.metrics import Metrics

logger = logging.getLogger("ferry.grpc")
REFUSAL_LOG_S = 10.0  # at most one log line per this many seconds about calls refused for bytes in flight

Reply = TypeVar("Reply")


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    def __init__(self, plane: DataPlane, tracing: Tracing | None = None) -> None:
        self.plane = plane
        self.registry = plane.registry
        self.metrics = plane.metrics
        self.tracing = tracing

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.registry.is_ready())

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return pb.ServerMetadataResponse(**v2.server_metadata())

    async def ModelReady(self, request: Any, context: Any) -> Any:
        async def ready() -> Any:
            if request.name not in self.registry.models:
                self.registry.get(request.name)  # the 404 that lists the served models
            try:
                handle = self.registry.lookup(request.name, request.version or None)
                if self.plane.budget is None or handle.state is ModelState.FAILED:  # --max-memory: UNLOADED serves
                    self.registry.get(request.name, request.version or None)
            except FerryError as exc:
                if exc.status != 503:
                    raise
                return pb.ModelReadyResponse(ready=False)
            return pb.ModelReadyResponse(ready=True)

        return await self._call("grpc:ModelReady", request.name, context, ready)

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        async def metadata() -> Any:
            budget = self.plane.budget
            if budget is None:
                handle = self.registry.get(request.name, request.version or None)
            else:  # --max-memory: metadata loads an unloaded model, like a prediction
                handle = await budget.acquire(request.name, request.version or None)
                budget.release(handle)
            metadata = v2.model_metadata(handle, list(self.registry.models[handle.name]))
            metadata.pop("explanation")  # (ModelMetadataResponse has no field for it)
            return pb.ModelMetadataResponse(**metadata)

        return await self._call("grpc:ModelMetadata", request.name, context, metadata)

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        async def given() -> Any:
            return request

        async def call() -> Any:
            try:
                return await self.plane.infer(
                    GRPC_CODEC, request.model_name, request.model_version or None, given, context.time_remaining()
                )
            except FerryError as exc:  # already counted and reported by infer
                await context.abort(_code(exc), exc.message)
                raise  # abort() raises; this line only satisfies the type checker

        if self.tracing is None:
            return await call()
        return await self.tracing.grpc("ModelInfer", request.model_name, context, call)

    async def _call(self, route: str, model: str, context: Any, action: Callable[[], Awaitable[Reply]]) -> Reply:
        """Count and time one per-model call besides infer; errors take the shared ``report`` policy."""
        start = time.perf_counter()
        label = model if model in self.registry.models else UNKNOWN_MODEL
        status = "OK"
        try:
            return await action()
        except Exception as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            error = report(exc, self.metrics, label)
            status = status_code(error)
            await context.abort(_code(error), error.message)
            raise
        finally:
            self.metrics.requests.labels(label, route, "grpc", status).inc()
            self.metrics.latency.labels(label, route).observe(time.perf_counter() - start)


SERVICE = "inference.GRPCInferenceService"


class InflightBytes:
    """The bytes of the ModelInfer messages a server is reading or handling at once, bounded.

    A call is admitted before its message is read, so its size is not known yet: it holds the
    largest a message may be (``--max-body-bytes``) until read, then its own size until answered.
    Refusing before the read is what saves memory: gRPC reads a message only when asked for it,
    beyond the stream's flow-control window. A call alone is never refused.
    """

    def __init__(self, limit: int, largest: int) -> None:
        self.limit, self.largest = limit, largest  # limit 0: no bound
        self.held = 0
        self.refused = 0  # since the last log line about it
        self.logged_at = -REFUSAL_LOG_S

    def reserve(self) -> int | None:
        """The bytes held for a call about to be read, or None: refused."""
        if self.limit and self.held and self.held + self.largest > self.limit:
            self.refused += 1
            now = time.monotonic()
            if now - self.logged_at >= REFUSAL_LOG_S:
                logger.warning(
                    "gRPC: %d calls refused for request bytes in flight (over %d) since the last line",
                    self.refused,
                    self.limit,
                )
                self.refused, self.logged_at = 0, now
            return None
        self.held += self.largest
        return self.largest

    def settle(self, reserved: int, size: int) -> int:
        self.held += size - reserved
        return size

    def release(self, size: int) -> None:
        self.held -= size


def add_service(server: grpc.aio.Server, servicer: InferenceServicer, inflight: InflightBytes | None = None) -> None:
    """Register the service's methods taking their request as bytes, parsed by ``_parsing``.

    The generated registration hands parsing to gRPC, which answers a request that does not parse
    with UNKNOWN before any handler or metric sees it. Here it is INVALID_ARGUMENT, counted like
    any client error, as Triton answers it. ModelInfer, whose messages are the big ones, is
    registered as a stream (the same bytes on the wire), so it is admitted before its message is read.
    """
    handlers = {}
    for method in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
        request_type, response_type = getattr(pb, method.input_type.name), getattr(pb, method.output_type.name)
        handler = _parsing(method.name, request_type, getattr(servicer, method.name), servicer.metrics)
        if method.name == "ModelInfer" and inflight is not None and inflight.limit:
            handlers[method.name] = grpc.stream_unary_rpc_method_handler(
                _bounded(handler, inflight, servicer.metrics), response_serializer=response_type.SerializeToString
            )
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                handler, response_serializer=response_type.SerializeToString
            )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)


Handler = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[Any]]


def _parsing(name: str, request_type: Any, method: Callable[[Any, Any], Awaitable[Any]], metrics: Metrics) -> Handler:
    route = f"grpc:{name}"

    async def handler(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        try:
            request = request_type.FromString(raw)
        except DecodeError as exc:
            error = report(InvalidInput(f"malformed {request_type.__name__}: {exc}"), metrics)
            metrics.requests.labels(UNKNOWN_MODEL, route, "grpc", status_code(error)).inc()
            await context.abort(_code(error), error.message)
        return await method(request, context)

    return handler


def _bounded(handler: Handler, inflight: InflightBytes, metrics: Metrics) -> Any:
    """ModelInfer admitted by ``inflight`` before its one message is read; RESOURCE_EXHAUSTED past it."""
    route = "grpc:ModelInfer"

    async def bounded(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
        held = inflight.reserve()
        if held is None:  # RESOURCE_EXHAUSTED, as gRPC's own maximum_concurrent_rpcs answers
            error = report(Overloaded(f"request bytes in flight exceed {inflight.limit}; retry shortly"), metrics)
            metrics.requests.labels(UNKNOWN_MODEL, route, "grpc", "RESOURCE_EXHAUSTED").inc()
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, error.message)
            raise AssertionError  # abort() raises
        try:
            raw = await anext(aiter(requests), None)
            if raw is None:
                error = report(InvalidInput("no ModelInferRequest sent"), metrics)
                metrics.requests.labels(UNKNOWN_MODEL, route, "grpc", status_code(error)).inc()
                await context.abort(_code(error), error.message)
                raise AssertionError
            held = inflight.settle(held, len(raw))
            return await handler(raw, context)
        finally:
            inflight.release(held)

    return bounded


def _code(error: FerryError) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, status_code(error))


class TokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """The HTTP side's bearer tokens, for gRPC: ``authorization: Bearer <token>`` or ``x-api-key`` metadata.

    Server liveness and readiness never need a token; ``ModelReady`` names a model, so it does, as
    ``GET /v2/models/{name}/ready`` does over HTTP.
    """

    EXEMPT = frozenset({"ServerLive", "ServerReady"})

    def __init__(self, auth: TokenAuth) -> None:
        self.auth = auth

        async def deny(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid credentials")

        self._deny = grpc.unary_unary_rpc_method_handler(deny)

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        if details.method.rsplit("/", 1)[-1] in self.EXEMPT:
            return await continuation(details)
        headers = [(k.encode(), v.encode() if isinstance(v, str) else v) for k, v in details.invocation_metadata or ()]
        try:
            self.auth.check(headers)
        except Unauthorized:
            return self._deny
        return await continuation(details)


async def start_server(
    plane: DataPlane,
    host: str,
    port: int,
    max_message: int,
    auth: TokenAuth | None = None,
    tracing: Tracing | None = None,
    shared: bool = False,
    max_inflight_bytes: int = 0,
) -> grpc.aio.Server:
    """Bind and start; a port that cannot be bound is an error, never a silent gRPC-less server.

    The port is this server's alone (gRPC would share it through SO_REUSEPORT by default), unless
    ``shared``: the workers of one ``--workers N`` server, each with its own gRPC server.
    ``max_inflight_bytes`` bounds the request bytes its calls hold at once (0: no bound).
    """
    options = [("grpc.max_receive_message_length", max_message), ("grpc.max_send_message_length", max_message)]
    options.append(("grpc.so_reuseport", int(shared)))
    if max_inflight_bytes:
        # Without BDP probing a stream's window stays small until its call reads: a call not yet admitted
        # holds a few KiB in gRPC's buffers, not its whole message (with it, 100 unread 8 MiB calls sat there).
        options.append(("grpc.http2.bdp_probe", 0))
    interceptors = [TokenInterceptor(auth)] if auth is not None else []
    server = grpc.aio.server(options=options, interceptors=interceptors)
    add_service(server, InferenceServicer(plane, tracing), InflightBytes(max_inflight_bytes, max_message))
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    server.add_insecure_port(address)
    await server.start()
    logger.info("gRPC (Open Inference v2) on %s", address)
    return server
