"""``inference.GRPCInferenceService`` on grpc.aio, in the REST server's event loop and over the same service."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import numpy as np

from ferry.auth import TokenAuth
from ferry.errors import FerryError, InvalidInput, Unauthorized
from ferry.grpc import inference_pb2 as pb
from ferry.grpc import inference_pb2_grpc as pb_grpc
from ferry.protocol import v2
from ferry.protocol.tensors import DATATYPES, Tensor, check_header, element_count, from_raw, to_raw
from ferry.serving.metrics import Metrics
from ferry.serving.registry import ModelHandle, ModelRegistry
from ferry.serving.service import InferenceService

if TYPE_CHECKING:
    from ferry.observability.tracing import Tracing

logger = logging.getLogger("ferry.grpc")

# FerryError status -> gRPC status code.
_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}

# Which typed ``contents`` field carries each datatype (FP16 travels only as raw bytes).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

Reply = TypeVar("Reply")


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    def __init__(
        self, registry: ModelRegistry, service: InferenceService, metrics: Metrics, tracing: Tracing | None = None
    ) -> None:
        self.registry = registry
        self.service = service
        self.metrics = metrics
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
                self.registry.get(request.name, request.version or None)
            except FerryError as exc:
                if exc.status != 503:
                    raise
                return pb.ModelReadyResponse(ready=False)
            return pb.ModelReadyResponse(ready=True)

        return await self._call("grpc:ModelReady", request.name, context, ready)

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        async def metadata() -> Any:
            handle = self.registry.get(request.name, request.version or None)
            return pb.ModelMetadataResponse(**v2.model_metadata(handle, self.registry))

        return await self._call("grpc:ModelMetadata", request.name, context, metadata)

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        async def infer() -> Any:
            handle = self.registry.get(request.model_name, request.model_version or None)
            infer_request = decode_request(request)
            v2.check_requested(infer_request, handle, "outputs")
            prediction = await self.service.predict(handle, v2.to_batch(infer_request.inputs, handle))
            outputs = v2.to_outputs(prediction, handle, infer_request)
            return encode_response(infer_request, handle, outputs, raw=len(request.raw_input_contents) > 0)

        def call() -> Awaitable[Any]:
            return self._call("grpc:ModelInfer", request.model_name, context, infer)

        if self.tracing is None:
            return await call()
        return await self.tracing.grpc("ModelInfer", request.model_name, context, call)

    async def _call(self, route: str, model: str, context: Any, action: Callable[[], Awaitable[Reply]]) -> Reply:
        """Count and time one per-model call; a FerryError becomes its gRPC status, anything else INTERNAL."""
        start = time.perf_counter()
        label = model if model in self.registry.models else "_unknown"
        status = "OK"
        try:
            return await action()
        except FerryError as exc:
            code = _CODES.get(exc.status, grpc.StatusCode.INTERNAL)
            status = code.name
            self.metrics.errors.labels(label, exc.code).inc()
            if exc.status >= 500:
                logger.error("%s: %s", exc.code, exc.message, exc_info=exc.__cause__)
            await context.abort(code, exc.message)
            raise  # abort() raises; this line only satisfies the type checker
        except Exception as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            status = "INTERNAL"
            self.metrics.errors.labels(label, "internal").inc()
            logger.exception("unhandled error in %s", route)
            await context.abort(grpc.StatusCode.INTERNAL, "internal server error")
            raise
        finally:
            self.metrics.requests.labels(label, route, "grpc", status).inc()
            self.metrics.latency.labels(label, route).observe(time.perf_counter() - start)


def _parameters(parameters: Any) -> dict[str, Any]:
    return {
        key: getattr(value, value.WhichOneof("parameter_choice") or "bool_param") for key, value in parameters.items()
    }


def decode_request(request: Any) -> v2.InferRequest:
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(f"{len(request.inputs)} inputs but {len(raw)} raw_input_contents", "raw_input_contents")
    inputs = []
    for i, tensor in enumerate(request.inputs):
        where = f"inputs[{i}]"
        name, datatype, shape = check_header(tensor.name, tensor.datatype, list(tensor.shape), where)
        if raw:
            data = from_raw(raw[i], datatype, shape, f"raw_input_contents[{i}]")
        else:
            data = _from_contents(tensor.contents, datatype, shape, f"{where}.contents")
        inputs.append(Tensor(name, datatype, shape, data, _parameters(tensor.parameters), where))
    outputs = [v2.RequestedOutput(o.name) for o in request.outputs] or None
    return v2.InferRequest(inputs, request.id or None, _parameters(request.parameters), outputs)


def _from_contents(contents: Any, datatype: str, shape: list[int], where: str) -> np.ndarray:
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidInput(f"{datatype} travels only in raw_input_contents", where)
    values = list(getattr(contents, field))
    count = element_count(shape)
    if len(values) != count:
        raise InvalidInput(f"shape {shape} holds {count} elements but {field} has {len(values)}", where)
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = values
        return array.reshape(shape)
    try:
        return np.asarray(values, dtype=DATATYPES[datatype]).reshape(shape)
    except OverflowError:
        raise InvalidInput(f"value out of range for {datatype}", where) from None


def encode_response(request: v2.InferRequest, handle: ModelHandle, outputs: list[Tensor], raw: bool) -> Any:
    """Raw output bytes when the client sent raw inputs (as Triton clients do), typed contents otherwise."""
    response = pb.ModelInferResponse(model_name=handle.name, model_version=handle.version, id=request.id or "")
    for tensor in outputs:
        entry = response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        if raw or tensor.datatype not in CONTENTS_FIELD:
            response.raw_output_contents.append(to_raw(tensor.data, tensor.datatype))
            continue
        values = tensor.data.reshape(-1).tolist()
        if tensor.datatype == "BYTES":
            values = [v if isinstance(v, bytes) else str(v).encode() for v in values]
        getattr(entry.contents, CONTENTS_FIELD[tensor.datatype]).extend(values)
    return response


class TokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """The HTTP side's bearer tokens, for gRPC: ``authorization: Bearer <token>`` or ``x-api-key`` metadata.

    Liveness and readiness calls never need a token.
    """

    EXEMPT = frozenset({"ServerLive", "ServerReady", "ModelReady"})

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
    registry: ModelRegistry,
    service: InferenceService,
    metrics: Metrics,
    host: str,
    port: int,
    max_message: int,
    auth: TokenAuth | None = None,
    tracing: Tracing | None = None,
) -> grpc.aio.Server:
    """Bind and start; a port that cannot be bound is an error, never a silent gRPC-less server."""
    options = [("grpc.max_receive_message_length", max_message), ("grpc.max_send_message_length", max_message)]
    interceptors = [TokenInterceptor(auth)] if auth is not None else []
    server = grpc.aio.server(options=options, interceptors=interceptors)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(registry, service, metrics, tracing), server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    server.add_insecure_port(address)
    await server.start()
    logger.info("gRPC (Open Inference v2) on %s", address)
    return server
