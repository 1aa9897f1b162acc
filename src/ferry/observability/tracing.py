"""OpenTelemetry traces (the ``tracing`` extra): one span per prediction, with decode, queue, model and encode.

Imported only when ``--tracing`` is set, so a server without it never loads OpenTelemetry. The server
span is a child of the caller's W3C ``traceparent``. Its children are drawn when the request ends,
from monotonic marks that the request, the service and the batcher leave on a ``RequestTrace``: the
prediction path only stores numbers, and a batch shared by several requests appears under each of
them as its own ``model`` span with the batch's timing and size. The gateway uses live spans instead:
a server span per proxied request and a client span per upstream call, whose context it forwards.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TypeVar

import orjson

from ferry._version import __version__
from ferry.errors import TracingError
from ferry.observability.context import current_request_id
from ferry.protocol.routes import protocol_of

try:
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SpanExporter,
        SpanExportResult,
    )
    from opentelemetry.trace import Span, SpanKind, Status, StatusCode
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError as exc:  # pragma: no cover - the test extras install it
    raise ImportError("tracing needs the tracing extra: pip install 'ferry[tracing]'") from exc

Reply = TypeVar("Reply")

TRACE_HEADERS = frozenset({"traceparent", "tracestate"})
_TRACE_HEADER_BYTES = frozenset(h.encode() for h in TRACE_HEADERS)
FILE_FLUSH_MS = 200  # spans reach a JSON-lines file within this, so a reader sees a request soon after it ends
# gRPC codes that are the server's failure, not the caller's (OpenTelemetry's semantic conventions).
_GRPC_SERVER_ERRORS = frozenset({"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE"})


_WALL_MINUS_MONOTONIC_NS = time.time_ns() - time.monotonic_ns()  # monotonic marks -> span timestamps


class RequestTrace:
    """Monotonic marks of one request; ``None`` where the request never got that far."""

    __slots__ = (
        "answered",
        "batch_ended",
        "batch_failed",
        "batch_requests",
        "batch_rows",
        "batch_started",
        "model",
        "predicting",
        "read",
        "responded",
        "start",
        "status",
        "version",
    )

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.read: float | None = None  # the whole body is in
        self.predicting: float | None = None  # handed to the service (after decoding)
        self.batch_started: float | None = None
        self.batch_ended: float | None = None
        self.batch_rows = self.batch_requests = 0
        self.batch_failed = False
        self.answered: float | None = None  # the service answered (before encoding)
        self.responded: float | None = None  # the response started
        self.status = 0
        self.model: str | None = None
        self.version: str | None = None

    def batched(self, started: float, ended: float, rows: int, requests: int, failed: bool) -> None:
        self.batch_started, self.batch_ended = started, ended
        self.batch_rows, self.batch_requests, self.batch_failed = rows, requests, failed

    def predicted(self, at: float) -> None:
        self.answered = at

    def ns(self, at: float) -> int:
        """A monotonic mark as wall-clock nanoseconds, as spans carry them.

        One offset for the whole process, so the marks of a batch shared by several requests map to the
        very same nanoseconds in each request's spans.
        """
        return int(at * 1e9) + _WALL_MINUS_MONOTONIC_NS


class Tracing:
    """The tracer provider, the W3C propagator, and the trace of the request being served."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("ferry", __version__)
        self.propagator = TraceContextTextMapPropagator()
        self._current: ContextVar[RequestTrace | None] = ContextVar("ferry_trace", default=None)

    @classmethod
    def from_setting(cls, target: str, service: str = "ferry") -> Tracing:
        """``otlp`` (configured by the OTEL_EXPORTER_OTLP_* variables), ``console``, or a JSON-lines file path."""
        resource = Resource.create(
            {
                "service.name": os.environ.get("OTEL_SERVICE_NAME", service),
                "service.version": __version__,
                "process.pid": os.getpid(),
            }
        )
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(_processor(target))
        return cls(provider)

    def shutdown(self) -> None:
        """Export what is buffered, then stop the exporter."""
        self.provider.shutdown()

    # -- the model server --------------------------------------------------------------------------
    def begin(self, name: str, version: str, at: float) -> RequestTrace | None:
        """The service's hook: the current request's trace, for its first prediction only (not a shadow's)."""
        request = self._current.get()
        if request is None or request.predicting is not None:
            return None
        request.model, request.version, request.predicting = name, version, at
        return request

    def start_request(self) -> tuple[RequestTrace, Any]:
        request = RequestTrace()
        return request, self._current.set(request)

    def end_request(self, token: Any) -> None:
        self._current.reset(token)

    async def grpc(self, method: str, model: str, context: Any, call: Callable[[], Awaitable[Reply]]) -> Reply:
        """Trace one gRPC call; ``context`` is its ``grpc.aio.ServicerContext`` (metadata in, status code out)."""
        request, token = self.start_request()
        code = "OK"
        try:
            return await call()
        except BaseException:
            status = context.code()
            code = getattr(status, "name", "UNKNOWN") if status is not None else "UNKNOWN"
            raise
        finally:
            request.responded = time.monotonic()
            self.end_request(token)
            metadata = context.invocation_metadata() or ()
            carrier = {k: v for k, v in metadata if k in TRACE_HEADERS and isinstance(v, str)}
            attributes = {
                "rpc.system": "grpc",
                "rpc.service": "inference.GRPCInferenceService",
                "rpc.method": method,
                "rpc.grpc.status_code": code,
                "ferry.protocol": "grpc",
            }
            self.record(request, carrier, request.model or model, attributes, code in _GRPC_SERVER_ERRORS)

    def record_http(
        self, request: RequestTrace, method: str, path: str, headers: list[tuple[bytes, bytes]], model: str
    ) -> None:
        """Draw an HTTP prediction's spans (the request pipeline's ``TracingStep`` marks the request)."""
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in headers if k in _TRACE_HEADER_BYTES}
        attributes = {
            "http.request.method": method,
            "url.path": path,
            "http.response.status_code": request.status,
            "ferry.protocol": http_protocol(path),
        }
        self.record(request, carrier, model, attributes, request.status >= 500)

    def record(
        self,
        request: RequestTrace,
        carrier: Mapping[str, str],
        model: str,
        attributes: dict[str, Any],
        failed: bool,
    ) -> None:
        """Draw the request's spans: the server span under the caller's context, then its phases."""
        end = time.monotonic()
        attributes["ferry.model"] = model
        if request.version is not None:
            attributes["ferry.model.version"] = request.version
        request_id = current_request_id()
        if request_id is not None:
            attributes["ferry.request_id"] = request_id
        span = self.tracer.start_span(
            f"predict {model}",
            context=self.propagator.extract(carrier),
            kind=SpanKind.SERVER,
            attributes=attributes,
            start_time=request.ns(request.start),
        )
        if span.is_recording():
            _phases(self.tracer, span, request, end)
            if failed:
                span.set_status(Status(StatusCode.ERROR))
        span.end(end_time=request.ns(end))

    # -- the gateway -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def server_span(self, name: str, headers: Mapping[str, str], attributes: dict[str, Any]) -> Iterator[Answer]:
        """A live server span under the caller's ``traceparent``, current while the block runs."""
        parent = self.propagator.extract(headers)
        with self.tracer.start_as_current_span(name, context=parent, kind=SpanKind.SERVER, attributes=attributes) as s:
            yield Answer(s, {})

    @contextlib.contextmanager
    def client_span(self, name: str, headers: Mapping[str, str], attributes: dict[str, Any]) -> Iterator[Answer]:
        """A client span, child of the current one; ``Answer.headers`` carry its context in place of the caller's."""
        with self.tracer.start_as_current_span(name, kind=SpanKind.CLIENT, attributes=attributes) as span:
            forward = {k: v for k, v in headers.items() if k.lower() not in TRACE_HEADERS}
            self.propagator.inject(forward)
            yield Answer(span, forward)


class Answer:
    """A live span's handle for code that knows no OpenTelemetry: the headers to send, the status to record."""

    def __init__(self, span: Span, headers: dict[str, str]) -> None:
        self.span = span
        self.headers = headers

    def status(self, code: int) -> None:
        self.span.set_attribute("http.response.status_code", code)
        if code >= 500:
            self.span.set_status(Status(StatusCode.ERROR))


def http_protocol(path: str) -> str:
    """The protocol of a predict path, from the route table; ``compat`` for a bundle's own route."""
    return protocol_of(path)


def _phases(tracer: trace.Tracer, server: Span, request: RequestTrace, end: float) -> None:
    """decode, queue, model and encode, as children of ``server``; a phase the request never reached is left out."""
    inside = trace.set_span_in_context(server)
    responded = request.responded or end

    def child(
        name: str, begin: float, finish: float, attributes: dict[str, Any] | None = None, failed: bool = False
    ) -> None:
        span = tracer.start_span(name, context=inside, attributes=attributes, start_time=request.ns(begin))
        if failed:
            span.set_status(Status(StatusCode.ERROR))
        span.end(end_time=request.ns(max(finish, begin)))

    if request.predicting is None:  # refused before the model: bad input, or no ready version
        child("decode", request.read or request.start, responded, failed=True)
        return
    child("decode", request.read or request.start, request.predicting)
    child("queue", request.predicting, request.batch_started or request.answered or responded)
    if request.batch_started is not None and request.batch_ended is not None:
        batch = {"ferry.batch.rows": request.batch_rows, "ferry.batch.requests": request.batch_requests}
        child("model", request.batch_started, request.batch_ended, batch, request.batch_failed)
    if request.answered is not None:
        child("encode", request.answered, responded)


def _processor(target: str) -> BatchSpanProcessor:
    if target == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return BatchSpanProcessor(OTLPSpanExporter())
    if target == "console":
        return BatchSpanProcessor(ConsoleSpanExporter())
    return BatchSpanProcessor(JsonLinesExporter(Path(target)), schedule_delay_millis=FILE_FLUSH_MS)


def check_target(target: str) -> None:
    """Refuse, at start-up, a file that cannot be written (``otlp`` and ``console`` need nothing here)."""
    if target in ("otlp", "console"):
        return
    path = Path(target)
    if not path.parent.is_dir():
        raise TracingError(f"--tracing: folder {path.parent} does not exist (expected otlp, console or a file path)")


class JsonLinesExporter(SpanExporter):
    """Each span as one JSON object per line, appended to a file (workers share it: one write per batch)."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("ab")
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = b"".join(orjson.dumps(span_record(span)) + b"\n" for span in spans)
        with self._lock:
            if self._file.closed:
                return SpanExportResult.FAILURE
            self._file.write(lines)
            self._file.flush()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self._lock:
            self._file.close()


def span_record(span: ReadableSpan) -> dict[str, Any]:
    context, parent = span.context, span.parent
    start, end = span.start_time or 0, span.end_time or 0
    return {
        "name": span.name,
        "trace_id": f"{context.trace_id:032x}" if context is not None else None,
        "span_id": f"{context.span_id:016x}" if context is not None else None,
        "parent_id": f"{parent.span_id:016x}" if parent is not None else None,
        "kind": span.kind.name,
        "start_ns": start,
        "end_ns": end,
        "duration_ms": round((end - start) / 1e6, 3),
        "status": span.status.status_code.name,
        "service": span.resource.attributes.get("service.name"),
        "attributes": dict(span.attributes or {}),
    }


__all__ = ["JsonLinesExporter", "RequestTrace", "Tracing", "TracingError", "check_target"]
