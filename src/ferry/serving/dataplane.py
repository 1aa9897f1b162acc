"""The data plane: one transport-free ``infer`` that every protocol, REST or gRPC, calls exactly once.

A protocol is only a ``Codec``: it decodes its wire message into a runtime batch for one model and
encodes the prediction back. ``infer`` owns everything between: the model lookup, the deadline
(the server's default, the model's manifest, and the client's, which may only lower it),
admission and batching (``InferenceService``), the request metrics, and the error policy
(``report``), so the same request gets the same answer and the same counts on every protocol.

A message larger than ``OFF_LOOP_BYTES`` is decoded, and its answer encoded, on one thread of its own,
within the request's deadline: an 8 MiB MLflow body took seconds of pure Python on the loop. One
thread, not a pool: decoding holds the GIL, and each more thread contending for it lengthens every
wait of the loop (four at once held a small request for 1.7 s; one holds it for milliseconds).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

from ferry.errors import (
    ClientClosed,
    DeadlineExceeded,
    ExplanationUnavailable,
    FerryError,
    InternalError,
    InvalidInput,
)
from ferry.runtimes import Prediction
from ferry.runtimes.base import clipped
from ferry.runtimes.explain import NotExplainable, explanation_of
from ferry.serving.budget import MemoryBudget
from ferry.serving.metrics import Metrics
from ferry.serving.registry import ModelHandle, ModelRegistry
from ferry.serving.service import InferenceService

logger = logging.getLogger("ferry.serving")

MAX_TIMEOUT_S = 300.0
OFF_LOOP_BYTES = 64 * 1024  # a message past this is decoded (and answered) off the event loop: >~1 ms of work
UNKNOWN_MODEL = "_unknown"  # the metrics label of a model name the registry does not hold
_T = TypeVar("_T")
Answer = Callable[[Any, ModelHandle, Any, float | None], Awaitable[Any]]  # decode, compute, encode


class Codec(Protocol):
    """One protocol's wire format around ``infer``: ``decode`` a message, ``encode`` a prediction."""

    protocol: str  # the ``protocol`` label of the request metrics
    route: str  # the ``route`` label: a template, never a raw path

    def decode(self, message: Any, handle: ModelHandle) -> tuple[Any, Any]:
        """``(batch, context)``: the runtime batch, and what ``encode`` needs to answer in kind."""
        ...

    def encode(self, prediction: Prediction, handle: ModelHandle, context: Any) -> Any: ...

    def status(self, error: FerryError | None) -> str:
        """The ``status`` label: an HTTP code, or a gRPC code name."""
        ...


def parse_timeout(value: str | bytes | None) -> float | None:
    """A client's deadline, ``X-Request-Timeout``: seconds (``0.5``) or milliseconds (``500ms``), at most 300 s."""
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
    if not 0 < seconds <= MAX_TIMEOUT_S:  # also refuses nan
        raise InvalidInput(f"X-Request-Timeout must be in (0, {MAX_TIMEOUT_S:g}] seconds", "X-Request-Timeout")
    return seconds


def report(exc: BaseException, metrics: Metrics | None = None, model: str = UNKNOWN_MODEL) -> FerryError:
    """The one error policy of every transport: count it, log what an operator must see, return a FerryError.

    A client's mistake (4xx) and an expected, counted 5xx (shedding, deadlines, a model still
    loading) are not logged; an unexpected 5xx is, with its cause; anything that is not a FerryError
    becomes a 500 whose details stay in the log.
    """
    if isinstance(exc, FerryError):
        error = exc
        if error.status >= 500 and not error.expected:
            logger.error("%s: %s", error.code, error.message, exc_info=error.__cause__)
    else:
        logger.error("unhandled error", exc_info=exc)
        error = InternalError("internal server error")
    if metrics is not None:
        metrics.errors.labels(model, error.code).inc()
    return error


_CLOSED = ClientClosed("the client closed the request")


class _Meter:
    """The request counters and latency histogram of one (model, route, protocol), labelled once."""

    __slots__ = ("counters", "latency", "metrics", "model", "protocol", "route")

    def __init__(self, metrics: Metrics, model: str, route: str, protocol: str) -> None:
        self.metrics, self.model, self.route, self.protocol = metrics, model, route, protocol
        self.latency = metrics.latency.labels(model, route)
        self.counters: dict[str, Any] = {}

    def count(self, status: str, elapsed: float) -> None:
        counter = self.counters.get(status)
        if counter is None:
            counter = self.counters[status] = self.metrics.requests.labels(
                self.model, self.route, self.protocol, status
            )
        counter.inc()
        self.latency.observe(elapsed)


def _explains(codec: Codec, context: Any) -> bool:
    """Whether a decoded request asks for its explanation with its prediction (a codec's ``explains``)."""
    explains = getattr(codec, "explains", None)
    return explains is not None and bool(explains(context))


def _size(message: Any) -> int:
    """Bytes of a wire message: an HTTP body (``HttpMessage.body``) or a protobuf message; 0 if neither."""
    kind = type(message)
    measure = _MEASURES.get(kind)
    if measure is None:
        measure = _MEASURES[kind] = _measure(kind)
    return measure(message)


_MEASURES: dict[type, Callable[[Any], int]] = {}  # message type -> how to measure it (a handful of types)


def _measure(kind: type) -> Callable[[Any], int]:
    """How ``_size`` measures a message of this type, decided once per type: probing a protobuf message for a
    ``body`` it lacks raised and caught an AttributeError on every call (~1 µs of each gRPC call)."""
    if hasattr(kind, "ByteSize"):
        return lambda message: int(message.ByteSize())
    if hasattr(kind, "body"):  # a slotted HttpMessage
        return _body
    return _probe


def _body(message: Any) -> int:
    body = message.body
    return len(body) if isinstance(body, bytes | bytearray | memoryview) else 0


def _probe(message: Any) -> int:
    body = getattr(message, "body", None)
    if isinstance(body, bytes | bytearray | memoryview):
        return len(body)
    byte_size = getattr(message, "ByteSize", None)
    return int(byte_size()) if byte_size is not None else 0


class DataPlane:
    """Lookup, deadline, admission, batching, metrics and errors for one request of any protocol."""

    def __init__(
        self,
        registry: ModelRegistry,
        service: InferenceService,
        metrics: Metrics,
        request_timeout: float = 30.0,
        budget: MemoryBudget | None = None,
        sampled: frozenset[str] = frozenset(),
    ) -> None:
        self.registry = registry
        self.sampled = sampled  # --explain-sampled: models the operator lets explain by sampling
        self._samplers: dict[int, Any] = {}  # id(loaded model) -> its SampledShapley
        self.budget = budget  # --max-memory: models load on demand and are held while they predict
        self.service = service
        self.metrics = metrics
        self.request_timeout = request_timeout
        self._meters: dict[tuple[str, str, str], _Meter] = {}
        self._decoder: ThreadPoolExecutor | None = None  # big messages' decode and encode (``_off_loop``)

    def deadline(self, handle: ModelHandle, client: float | None) -> float:
        """The server's default, or the model's own; a client may shorten it, never extend it."""
        assert handle.model is not None
        limit = handle.model.manifest.limits.timeout_s or self.request_timeout
        return limit if client is None or client >= limit else client

    async def infer(
        self,
        codec: Codec,
        model: str,
        version: str | None,
        read: Callable[[], Awaitable[Any]],
        timeout: float | bytes | None = None,
        answer: Answer | None = None,
    ) -> Any:
        """Read and decode the message, predict within the deadline, encode; count and report either way.

        ``read`` gives the wire message (an HTTP body is read here, so a body too large or too
        slow is counted like any other error); ``timeout`` is the client's deadline in seconds, or
        the raw ``X-Request-Timeout`` header. ``answer`` replaces the prediction (``explain``).
        Raises the reported ``FerryError`` on failure.
        """
        answer = answer or self._predict
        start = time.perf_counter()
        label = model if model in self.registry.models else UNKNOWN_MODEL
        try:
            message = await read()
            client = parse_timeout(timeout) if isinstance(timeout, bytes) else timeout
            budget = self.budget
            if budget is None:
                result = await answer(codec, self.registry.get(model, version), message, client)
            else:
                handle = await budget.acquire(model, version)
                try:
                    result = await answer(codec, handle, message, client)
                finally:
                    budget.release(handle)
        except asyncio.CancelledError:
            self._meter(label, codec).count(codec.status(_CLOSED), time.perf_counter() - start)
            raise
        except Exception as exc:
            error = report(exc, self.metrics, label)
            self._meter(label, codec).count(codec.status(error), time.perf_counter() - start)
            if error is exc:
                raise
            raise error from exc
        self._meter(label, codec).count(codec.status(None), time.perf_counter() - start)
        return result

    async def _predict(self, codec: Codec, handle: ModelHandle, message: Any, client: float | None) -> Any:
        deadline = self.deadline(handle, client)
        if _size(message) <= OFF_LOOP_BYTES:
            batch, context = codec.decode(message, handle)
            if _explains(codec, context):  # OIP v2's ``parameters.explain``: the prediction and its explanation
                return codec.encode(await self._explanation(handle, batch, client), handle, context)
            prediction = await self.service.predict(handle, batch, deadline)
            return codec.encode(prediction, handle, context)
        ends = time.monotonic() + deadline
        batch, context = await self._off_loop(ends, codec.decode, message, handle)
        if _explains(codec, context):
            return codec.encode(await self._explanation(handle, batch, client), handle, context)
        prediction = await self.service.predict(handle, batch, max(ends - time.monotonic(), 0.001))
        return await self._off_loop(ends, codec.encode, prediction, handle, context)  # as many rows out as in

    async def _off_loop(self, ends: float, work: Callable[..., _T], *args: Any) -> _T:
        """``work(*args)`` on the decode thread, by monotonic time ``ends``; dropped unstarted if that passes first."""
        if self._decoder is None:
            self._decoder = ThreadPoolExecutor(1, thread_name_prefix="ferry-decode")
        loop = asyncio.get_running_loop()
        call = functools.partial(contextvars.copy_context().run, work, *args)  # (the request ID, for its log lines)
        try:
            return await asyncio.wait_for(
                loop.run_in_executor(self._decoder, call), max(ends - time.monotonic(), 0.001)
            )
        except TimeoutError:
            raise DeadlineExceeded("request not decoded within its deadline") from None

    async def explain(
        self,
        codec: Codec,
        model: str,
        version: str | None,
        read: Callable[[], Awaitable[Any]],
        timeout: float | bytes | None = None,
    ) -> Any:
        """``infer`` with the model's exact contributions (``runtime.explain``) in place of its prediction:
        the same lookup, deadline, metrics and errors; ``codec.encode`` gets an ``Explanation``."""
        return await self.infer(codec, model, version, read, timeout, self._explain)

    async def _explain(self, codec: Codec, handle: ModelHandle, message: Any, client: float | None) -> Any:
        if _size(message) <= OFF_LOOP_BYTES:
            batch, context = codec.decode(message, handle)
        else:
            ends = time.monotonic() + self.deadline(handle, client)
            batch, context = await self._off_loop(ends, codec.decode, message, handle)
        return codec.encode(await self._explanation(handle, batch, client), handle, context)

    async def _explanation(self, handle: ModelHandle, batch: Any, client: float | None) -> Any:
        """The model's prediction for ``batch`` and its exact contributions (an ``Explanation``), or the 501."""
        assert handle.model is not None
        runtime = handle.model.runtime
        how = explanation_of(runtime, handle.model.manifest.runtime)
        explain, merge = getattr(runtime, "explain", None), True
        if explain is None or "unavailable" in how:
            if handle.name not in self.sampled:
                raise ExplanationUnavailable(
                    f"model '{handle.name}' cannot be explained: {how['unavailable']}", self._explainable()
                )
            explain, merge = self._sampler(handle), False  # each row seeded by its place: never merged
        deadline = self.deadline(handle, client)
        started = time.monotonic()
        prediction = await self.service.predict(handle, batch, deadline)  # the answer being explained, as served
        # Batched as predictions are: concurrent requests' rows in one call on the model's thread pool; a client
        # gone or past the deadline stops waiting, and a batch nobody waits for any more is not computed.
        left = max(deadline - (time.monotonic() - started), 0.001)
        try:
            explanation = await self.service.explain(handle, batch, explain, left, merge)
        except NotExplainable as exc:  # found when its tables were first built (a path over 64 features)
            raise ExplanationUnavailable(
                f"model '{handle.name}' cannot be explained: {exc}", self._explainable()
            ) from None
        explanation.prediction = prediction
        return explanation

    def _sampler(self, handle: ModelHandle) -> Any:
        """The model's sampled explainer (``ferry.runtimes.sampled``), made once per loaded model; the 501 if
        its bundle has no background rows."""
        from ferry.runtimes.sampled import SampledShapley

        model = handle.model
        assert model is not None
        found = self._samplers.get(id(model))
        if found is None or found[0] is not model:
            predict = clipped(model.runtime.predict, model.manifest.output)
            try:
                found = (model, SampledShapley.from_bundle(predict, handle.path, model.manifest))
            except NotExplainable as exc:
                raise ExplanationUnavailable(
                    f"model '{handle.name}' cannot be explained: {exc}", self._explainable()
                ) from None
            self._samplers[id(model)] = found
        return found[1]

    def explanation(self, handle: ModelHandle) -> dict[str, Any]:
        """How ``explain`` answers for a loaded version, as metadata and the OpenAPI document say: exactly
        (``explanation_of``), by sampling where the operator named it (``sampled_explanation``), or why not."""
        model = handle.model
        assert model is not None
        how: dict[str, Any] = explanation_of(model.runtime, model.manifest.runtime)
        if "unavailable" in how and handle.name in self.sampled:
            from ferry.runtimes.sampled import sampled_explanation

            return sampled_explanation(model.manifest)
        return how

    def _explainable(self) -> list[str]:
        """The loaded models that answer ``explain``: exactly, or by sampling (named, with background rows)."""
        handles = self.registry.handles()
        return sorted({h.name for h in handles if h.model is not None and "method" in self.explanation(h)})

    def _meter(self, model: str, codec: Codec) -> _Meter:
        return self.meter(model, codec.route, codec.protocol)

    def meter(self, model: str, route: str, protocol: str) -> _Meter:
        """The request counters of one (model, route, protocol), made once: every request any transport
        answers, inference or not (``ferry.serving.models.ModelQueries.ask``), is counted through one."""
        key = (model, route, protocol)
        meter = self._meters.get(key)
        if meter is None:
            meter = self._meters[key] = _Meter(self.metrics, model, route, protocol)
        return meter
