"""The one predict path: every protocol and route ends here, so all share limits and metrics.

Explanations go the same way, through a second batcher per model (``explain``): concurrent requests' rows
share one explanation call, under the same bounds, deadlines and thread pool as predictions."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from ferry.bundle.manifest import Manifest
from ferry.errors import DeadlineExceeded, FerryError, ModelError, Overloaded, PayloadTooLarge
from ferry.runtimes import Prediction
from ferry.runtimes.base import clipped
from ferry.runtimes.explain import Explanation, NotExplainable, split_explanation
from ferry.serving.batcher import AdaptiveBatcher, BatchObserver
from ferry.serving.metrics import Metrics
from ferry.serving.registry import ModelHandle, ModelRegistry


class PredictionSink(Protocol):
    """Where sampled predictions go (``ferry.observability.predlog.PredictionLog``); it must not block."""

    def record(self, handle: ModelHandle, batch: Any, prediction: Prediction, latency_s: float) -> None: ...


class PredictionTrace(BatchObserver, Protocol):
    """One request's marks for its spans (``ferry.observability.tracing.RequestTrace``)."""

    def predicted(self, at: float) -> None: ...


class Tracer(Protocol):
    """Tracing, when on: the trace of the request being served, given once to the first predict that asks."""

    def begin(self, name: str, version: str, at: float) -> PredictionTrace | None: ...


class InferenceService:
    def __init__(
        self,
        registry: ModelRegistry,
        metrics: Metrics,
        threads: int = 1,
        request_timeout: float = 30.0,
        max_queue: int = 256,
        prediction_log: PredictionSink | None = None,
        tracer: Tracer | None = None,
        max_rows: int | None = None,
        max_pixels: int | None = None,
    ) -> None:
        self.registry = registry
        self.metrics = metrics
        self.request_timeout = request_timeout
        self.max_queue = max_queue
        self.prediction_log = prediction_log
        self.tracer = tracer
        self.max_rows = max_rows  # per request (--max-rows); None: no bound
        self.max_pixels = max_pixels  # decoded image pixels per request, read from the headers (--max-pixels)
        # Model compute runs off the event loop, so health and metrics never wait behind it.
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ferry-model")
        self._batchers: dict[int, AdaptiveBatcher[Prediction]] = {}
        self._explainers: dict[int, AdaptiveBatcher[Explanation]] = {}

    def batcher(self, handle: ModelHandle) -> AdaptiveBatcher[Prediction]:
        """One batcher per loaded model version, made on first use."""
        assert handle.model is not None
        key = id(handle.model)
        batcher = self._batchers.get(key)
        if batcher is None:
            manifest = handle.model.manifest
            config = manifest.batching
            enabled = _batches(manifest)
            batch_size = self.metrics.batch_size.labels(handle.name, handle.version)
            queue_wait = self.metrics.queue_wait.labels(handle.name, handle.version)
            compute = self.metrics.compute.labels(handle.name, handle.version)

            predictions = self.metrics.predictions.labels(handle.name, handle.version)
            predicted_rows = self.metrics.rows.labels(handle.name, handle.version)

            def on_batch(answered: int, rows: int, waited: float, computed: float) -> None:
                # Counted once per batch, not per request: the hot path stays lean under load.
                predictions.inc(answered)
                predicted_rows.inc(rows)
                batch_size.observe(rows)
                queue_wait.observe(waited)
                compute.observe(computed)

            batcher = AdaptiveBatcher(
                clipped(handle.model.runtime.predict, manifest.output),
                self.executor,
                max_batch_size=config.max_batch_size if enabled else 1,
                max_wait_s=config.max_wait_ms / 1000.0,
                on_batch=on_batch,
                max_queue=manifest.limits.max_queue or self.max_queue,
                compute_s=handle.compute_s,
                observed=self.tracer is not None,
            )
            self._batchers[key] = batcher
            self.metrics.track(handle.name, handle.version, lambda: (batcher.queue_depth, batcher.in_flight_rows))
        return batcher

    def forget(self, handle: ModelHandle) -> None:
        """Drop the batcher of a model being unloaded (``--max-memory``), so its memory can go."""
        if handle.model is not None:
            self._batchers.pop(id(handle.model), None)
            self._explainers.pop(id(handle.model), None)
        self.metrics.untrack(handle.name, handle.version)

    async def predict(self, handle: ModelHandle, batch: Any, timeout: float | None = None) -> Prediction:
        """Predict through the model's batcher, within ``timeout`` (else the model's or server's default)."""
        assert handle.model is not None
        self._check_budget(handle, batch)
        if timeout is None:
            timeout = handle.model.manifest.limits.timeout_s or self.request_timeout
        log = self.prediction_log
        started = time.perf_counter() if log is not None else 0.0
        tracer = self.tracer
        trace = tracer.begin(handle.name, handle.version, time.monotonic()) if tracer is not None else None
        try:
            prediction = await self.batcher(handle).predict(batch, len(batch), timeout, trace)
        except Overloaded:
            self.metrics.rejections.labels(handle.name, handle.version).inc()
            raise
        except DeadlineExceeded:
            self.metrics.deadline_misses.labels(handle.name, handle.version).inc()
            raise
        except FerryError:
            raise
        except Exception as exc:
            raise ModelError(f"model '{handle.name}' failed to predict: {type(exc).__name__}") from exc
        if trace is not None:
            trace.predicted(time.monotonic())
        if log is not None:
            log.record(handle, batch, prediction, time.perf_counter() - started)
        return prediction

    def explainer(
        self, handle: ModelHandle, explain: Callable[[Any], Explanation], merge: bool = True
    ) -> AdaptiveBatcher[Explanation]:
        """The model version's explanation batcher, made on first use: its predictions' size, wait and queue
        bounds; ``merge`` False keeps each request its own call (a sampled estimate seeds each row by its place)."""
        assert handle.model is not None
        key = id(handle.model)
        batcher = self._explainers.get(key)
        if batcher is None:
            manifest = handle.model.manifest
            config = manifest.batching
            enabled = merge and _batches(manifest)
            batch_size = self.metrics.explain_batch_size.labels(handle.name, handle.version)
            batcher = self._explainers[key] = AdaptiveBatcher(
                explain,
                self.executor,
                max_batch_size=config.max_batch_size if enabled else 1,
                max_wait_s=config.max_wait_ms / 1000.0,
                on_batch=lambda answered, rows, waited, computed: batch_size.observe(rows),
                max_queue=manifest.limits.max_queue or self.max_queue,
                split=split_explanation,
            )
        return batcher

    async def explain(
        self,
        handle: ModelHandle,
        batch: Any,
        explain: Callable[[Any], Explanation],
        timeout: float,
        merge: bool = True,
    ) -> Explanation:
        """``explain(batch)`` through the model's explanation batcher (``explainer``), within ``timeout``;
        ``NotExplainable`` passes through for the caller to answer."""
        assert handle.model is not None
        self._check_budget(handle, batch)
        try:
            return await self.explainer(handle, explain, merge).predict(batch, len(batch), timeout)
        except Overloaded:
            self.metrics.rejections.labels(handle.name, handle.version).inc()
            raise
        except DeadlineExceeded:
            self.metrics.deadline_misses.labels(handle.name, handle.version).inc()
            raise
        except (FerryError, NotExplainable):
            raise
        except Exception as exc:
            raise ModelError(f"model '{handle.name}' failed to explain: {type(exc).__name__}") from exc

    def _check_budget(self, handle: ModelHandle, batch: Any) -> None:
        """The work one request may ask for: rows, and for an image model the pixels its images decode to."""
        assert handle.model is not None
        if self.max_rows is not None and len(batch) > self.max_rows:
            raise PayloadTooLarge(
                f"request of {len(batch)} rows exceeds the limit of {self.max_rows} rows per request (--max-rows)"
            )
        if self.max_pixels is not None and handle.model.manifest.input.kind == "image":
            from ferry.runtimes.images import check_request_pixels

            spec = getattr(handle.model.runtime, "image", None)  # the model's own bound per image, if it declares one
            check_request_pixels(batch, self.max_pixels, getattr(spec, "max_pixels", None))

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=False)


def _batches(manifest: Manifest) -> bool:
    """Whether a model's requests share calls: as its manifest says, else all but a Python class's."""
    enabled = manifest.batching.enabled
    return enabled if enabled is not None else manifest.runtime != "python"
