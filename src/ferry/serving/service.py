"""The one predict path: every protocol and route ends here, so all share limits and metrics."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ferry.bundle.manifest import OutputSchema
from ferry.errors import FerryError
from ferry.runtimes import Prediction
from ferry.serving.batcher import AdaptiveBatcher
from ferry.serving.metrics import Metrics
from ferry.serving.registry import ModelHandle, ModelRegistry


class ModelError(FerryError):
    """The model itself raised while predicting: a server-side failure, reported without internals."""

    code = "model_error"


class InferenceService:
    def __init__(self, registry: ModelRegistry, metrics: Metrics, threads: int = 1) -> None:
        self.registry = registry
        self.metrics = metrics
        # Model compute runs off the event loop, so health and metrics never wait behind it.
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ferry-model")
        self._batchers: dict[int, AdaptiveBatcher] = {}

    def batcher(self, handle: ModelHandle) -> AdaptiveBatcher:
        """One batcher per loaded model version, made on first use."""
        assert handle.model is not None
        key = id(handle.model)
        batcher = self._batchers.get(key)
        if batcher is None:
            manifest = handle.model.manifest
            config = manifest.batching
            enabled = config.enabled if config.enabled is not None else manifest.runtime != "python"
            batch_size = self.metrics.batch_size.labels(handle.name, handle.version)
            queue_wait = self.metrics.queue_wait.labels(handle.name, handle.version)

            def on_batch(rows: int, waited: float) -> None:
                batch_size.observe(rows)
                queue_wait.observe(waited)

            batcher = AdaptiveBatcher(
                handle.model.runtime.predict,
                self.executor,
                max_batch_size=config.max_batch_size if enabled else 1,
                max_wait_s=config.max_wait_ms / 1000.0,
                on_batch=on_batch,
            )
            self._batchers[key] = batcher
        return batcher

    async def predict(self, handle: ModelHandle, batch: Any) -> Prediction:
        assert handle.model is not None
        try:
            prediction = await self.batcher(handle).predict(batch, len(batch))
        except FerryError:
            raise
        except Exception as exc:
            raise ModelError(f"model '{handle.name}' failed to predict: {type(exc).__name__}") from exc
        self.metrics.predictions.labels(handle.name, handle.version).inc()
        self.metrics.rows.labels(handle.name, handle.version).inc(len(prediction.values))
        return postprocess(prediction, handle.model.manifest.output)

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=False)


def postprocess(prediction: Prediction, output: OutputSchema) -> Prediction:
    """Clip numeric predictions to the declared range (e.g. star ratings to [1, 5])."""
    if output.kind == "number" and (output.min is not None or output.max is not None):
        clipped = np.clip(np.asarray(prediction.values, dtype=float), output.min, output.max)
        return Prediction(values=clipped.tolist(), probabilities=prediction.probabilities)
    return prediction
