"""``inference.GRPCInferenceService`` over ``DataPlane.infer``, on Ferry's own HTTP/2 framing (``ferry.grpc.http2``).

The server runs in the REST server's event loop. grpcio's server spent three quarters of its time in its
own completion queue and poller thread (bench/results/grpc-2026-12-07.md); this one frames unary calls in
an asyncio Protocol, as the HTTP side reads HTTP/1.1. Each call's message arrives whole, so its size is
known before anything is parsed: the bytes of the calls being handled at once are bounded by
``--max-inflight-bytes``, as HTTP bounds its bodies.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from google.protobuf.message import DecodeError  # type: ignore[import-untyped]

from ferry.auth import TokenAuth
from ferry.errors import FerryError, InvalidInput, Overloaded, Unauthorized
from ferry.grpc import inference_pb2 as pb
from ferry.grpc.codec import GRPC_CODEC, parse_infer, status_code
from ferry.grpc.frames import Call, GrpcError, Limits, StatusCode
from ferry.grpc.http2 import GrpcServer
from ferry.protocol import v2
from ferry.serving.dataplane import UNKNOWN_MODEL, DataPlane, report
from ferry.serving.models import ModelQueries
from ferry.settings import Settings

if TYPE_CHECKING:
    from ferry.observability.tracing import Tracing

logger = logging.getLogger("ferry.grpc")
REFUSAL_LOG_S = 10.0  # at most one log line per this many seconds about calls refused for bytes in flight
SERVICE = "inference.GRPCInferenceService"
SMALL_MESSAGE = 64 * 1024  # the largest request of the methods besides ModelInfer (RESOURCE_EXHAUSTED past it)
EXEMPT = frozenset({"ServerLive", "ServerReady"})  # never need a token (ModelReady names a model, so it does)

Method = Callable[[Any, Call], Awaitable[Any]]


class InferenceServicer:
    """The service's methods: a parsed request and its call in, a reply message out, or ``GrpcError``."""

    def __init__(self, plane: DataPlane, tracing: Tracing | None = None) -> None:
        self.plane = plane
        self.queries = ModelQueries(plane)  # readiness and metadata, answered and metered as HTTP's are
        self.metrics = plane.metrics
        self.tracing = tracing

    async def ServerLive(self, request: Any, call: Call) -> Any:
        return pb.ServerLiveResponse(live=self.queries.live())

    async def ServerReady(self, request: Any, call: Call) -> Any:
        return pb.ServerReadyResponse(ready=self.queries.ready())

    async def ServerMetadata(self, request: Any, call: Call) -> Any:
        return pb.ServerMetadataResponse(**v2.server_metadata())

    async def ModelReady(self, request: Any, call: Call) -> Any:
        async def ready() -> Any:
            return pb.ModelReadyResponse(ready=self.queries.model_ready(request.name, request.version or None))

        return await self._call("grpc:ModelReady", request.name, call, ready)

    async def ModelMetadata(self, request: Any, call: Call) -> Any:
        async def metadata() -> Any:
            handle = await self.queries.loaded(request.name, request.version or None)
            metadata = v2.model_metadata(handle, self.queries.versions(handle))
            metadata.pop("explanation")  # (ModelMetadataResponse has no field for it)
            return pb.ModelMetadataResponse(**metadata)

        return await self._call("grpc:ModelMetadata", request.name, call, metadata)

    async def ModelInfer(self, request: Any, call: Call) -> Any:
        if self.tracing is None:
            return await self._infer(request, call)
        return await self.tracing.grpc("ModelInfer", request.model_name, call, lambda: self._infer(request, call))

    async def _infer(self, request: Any, call: Call) -> Any:
        async def given() -> Any:
            return request

        try:
            return await self.plane.infer(
                GRPC_CODEC, request.model_name, request.model_version or None, given, call.time_remaining()
            )
        except FerryError as exc:  # already counted and reported by infer
            raise _status(call, exc) from None

    async def _call(self, route: str, model: str, call: Call, question: Callable[[], Awaitable[Any]]) -> Any:
        """One per-model call besides infer, counted and timed once by the data plane's ``ModelQueries.ask``
        (as HTTP's are); errors take the shared ``report`` policy."""
        try:
            return await self.queries.ask("grpc", route, model, question, _grpc_status)
        except FerryError as error:  # already reported and counted by ask
            raise _status(call, error) from None


def _grpc_status(answer: Any, error: FerryError | None) -> str:
    return "OK" if error is None else status_code(error)


def _status(call: Call, error: FerryError) -> GrpcError:
    call.status = StatusCode[status_code(error)]
    return GrpcError(call.status, error.message)


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


class InferenceService:
    """``http2.Service`` for ``inference.GRPCInferenceService``: route, check the token, bound the bytes, parse.

    A request that does not parse is INVALID_ARGUMENT, counted like any client error, as Triton answers
    it (grpcio's generated handlers answered UNKNOWN before any metric saw the call). ModelInfer, whose
    messages are the big ones, is admitted by ``inflight`` when its headers arrive, before its message is read.
    """

    def __init__(
        self, servicer: InferenceServicer, auth: TokenAuth | None = None, inflight: InflightBytes | None = None
    ) -> None:
        self.auth, self.metrics = auth, servicer.metrics
        self.inflight = inflight if inflight is not None and inflight.limit else None
        # path -> (method, its request message's name, how its bytes are parsed, the servicer's method)
        self.methods: dict[str, tuple[str, str, Callable[[bytes], Any], Method]] = {}
        for method in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
            parse = parse_infer if method.name == "ModelInfer" else getattr(pb, method.input_type.name).FromString
            handler = getattr(servicer, method.name)
            self.methods[f"/{SERVICE}/{method.name}"] = (method.name, method.input_type.name, parse, handler)

    def admit(self, call: Call) -> None:
        entry = self.methods.get(call.method)
        if entry is None:
            raise GrpcError(StatusCode.UNIMPLEMENTED, f"Method not found: {call.method}")
        name = entry[0]
        if self.auth is not None and name not in EXEMPT:
            try:
                self.auth.check((k.encode(), v.encode()) for k, v in call.metadata)
            except Unauthorized:
                raise GrpcError(StatusCode.UNAUTHENTICATED, "missing or invalid credentials") from None
        if name != "ModelInfer":  # a name and a version at most: the connection holds no more for these
            call.largest = SMALL_MESSAGE
        elif self.inflight is not None:
            held = self.inflight.reserve()
            if held is None:  # RESOURCE_EXHAUSTED, as gRPC's own maximum_concurrent_rpcs answers
                error = report(
                    Overloaded(f"request bytes in flight exceed {self.inflight.limit}; retry shortly"), self.metrics
                )
                self.metrics.requests.labels(UNKNOWN_MODEL, "grpc:ModelInfer", "grpc", "RESOURCE_EXHAUSTED").inc()
                raise GrpcError(StatusCode.RESOURCE_EXHAUSTED, error.message)
            call.held = held

    def received(self, call: Call) -> None:
        # The message is read: it holds its own size from now on, not the largest (at once: the calls whose
        # headers came in one read would otherwise hold the largest each until their tasks ran, and 32 such
        # 1-row calls were refused under the default 256 MiB bound).
        if call.held and self.inflight is not None:
            call.held = self.inflight.settle(call.held, len(call.message))

    async def handle(self, call: Call) -> bytes:
        name, message, parse, method = self.methods[call.method]
        try:
            request = parse(call.message)
        except DecodeError as exc:
            error = report(InvalidInput(f"malformed {message}: {exc}"), self.metrics)
            self.metrics.requests.labels(UNKNOWN_MODEL, f"grpc:{name}", "grpc", status_code(error)).inc()
            raise _status(call, error) from None
        reply = await method(request, call)
        return reply if isinstance(reply, bytes) else reply.SerializeToString()  # (bytes: the codec wrote it)

    def release(self, call: Call) -> None:
        if call.held and self.inflight is not None:
            self.inflight.release(call.held)
            call.held = 0


def limits(settings: Settings) -> Limits:
    """The HTTP side's bounds, read for gRPC: a message is a body, a header list a head."""
    return Limits(
        max_message=settings.max_body_bytes,
        max_header_bytes=settings.max_header_bytes,
        max_headers=settings.max_headers,
        max_connections=settings.max_connections,
        header_timeout=settings.header_timeout,
        message_timeout=settings.body_timeout,
    )


async def start_server(
    plane: DataPlane,
    sock: socket.socket,
    max_message: int,
    auth: TokenAuth | None = None,
    tracing: Tracing | None = None,
    max_inflight_bytes: int = 0,
    bounds: Limits | None = None,
) -> GrpcServer:
    """Serve on ``sock``, a listening socket (``ferry.server.ports.bind_listener``: the port this server's
    alone, or shared by the workers of one ``--workers N`` server, each with its own gRPC server on it).
    ``max_inflight_bytes`` bounds the request bytes its calls hold at once (0: no bound); ``bounds`` the
    rest (``limits(settings)``), its message size set to ``max_message``.
    """
    bounds = Limits(max_message=max_message) if bounds is None else bounds
    if bounds.max_message != max_message:
        bounds = Limits(**{**bounds.__dict__, "max_message": max_message})
    service = InferenceService(InferenceServicer(plane, tracing), auth, InflightBytes(max_inflight_bytes, max_message))
    server = GrpcServer(service, bounds)
    await server.start(sock)
    host, port = sock.getsockname()[:2]
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    logger.info("gRPC (Open Inference v2) on %s", address)
    return server
