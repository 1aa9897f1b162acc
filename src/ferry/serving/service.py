"""The one predict path: every protocol and route ends here, so all share limits and metrics."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ferry.bundle.manifest import OutputSchema
from ferry.errors import FerryError
from ferry.runtimes import Prediction
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

    async def predict(self, handle: ModelHandle, batch: Any) -> Prediction:
        assert handle.model is not None
        runtime = handle.model.runtime
        loop = asyncio.get_running_loop()
        try:
            prediction = await loop.run_in_executor(self.executor, runtime.predict, batch)
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
