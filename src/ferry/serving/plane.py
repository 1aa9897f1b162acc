"""A worker's serving parts, built once from ``Settings`` and handed to every transport: the registry, the
inference service, the memory budget, the ``DataPlane`` and its ``ModelQueries``, and their one lifespan.

``ferry.server.compose`` builds it and gives it to HTTP, gRPC and the probe listener; what the serving
layer cannot import (tracing, the prediction log, background watchers) is passed in.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from ferry.serving.budget import MemoryBudget, parse_size
from ferry.serving.dataplane import DataPlane
from ferry.serving.metrics import Metrics
from ferry.serving.models import ModelQueries
from ferry.serving.registry import ModelRegistry, ModelState
from ferry.serving.service import InferenceService
from ferry.settings import Settings

Background = Callable[[], Coroutine[Any, Any, None]]  # a task that runs while the plane serves


@dataclass(slots=True)
class Plane:
    """Everything a transport needs to answer a client; ``lifespan`` loads the models and releases the pool."""

    settings: Settings
    registry: ModelRegistry
    metrics: Metrics
    service: InferenceService
    budget: MemoryBudget | None
    data: DataPlane
    queries: ModelQueries
    tracing: Any = None  # ``ferry.observability.tracing.Tracing`` with --tracing: gRPC and HTTP trace through it
    prediction_log: Any = None  # ``ferry.observability.predlog.PredictionLog`` with --prediction-log

    @classmethod
    def build(
        cls,
        settings: Settings,
        registry: ModelRegistry,
        metrics: Metrics,
        tracing: Any = None,
        prediction_log: Any = None,
    ) -> Plane:
        """The parts, every limit from ``settings``; nothing starts until ``lifespan``."""
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
        data = DataPlane(registry, service, metrics, settings.request_timeout, budget, sampled)
        return cls(settings, registry, metrics, service, budget, data, ModelQueries(data), tracing, prediction_log)

    @contextlib.asynccontextmanager
    async def lifespan(self, background: Sequence[Background] = ()) -> AsyncIterator[None]:
        """Load the models while the block serves, run ``background`` beside it, then release the pool."""
        registry, budget = self.registry, self.budget
        # 1. Load every bundle off the event loop, so /health answers while models load.
        #    With --max-memory, verify the index instead, then load on demand (or preload what fits).
        #    A forked worker whose parent loaded every model has none left: no thread for nothing (a thread
        #    costs each worker ~0.4 MiB of private memory).
        if budget is not None:
            loading = asyncio.create_task(budget.start())
        elif any(handle.state is ModelState.LOADING for handle in registry.handles()):
            loading = asyncio.create_task(asyncio.to_thread(registry.load_all))
        else:
            loading = asyncio.create_task(_loaded())
        if self.settings.workers > 1:
            # Workers share one listening socket: a (re)started worker starts accepting only once its
            # models are loaded and warm, so the others keep taking the traffic meanwhile.
            await loading
        tasks = [asyncio.create_task(run()) for run in background]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            # 2. On shutdown (the transports have stopped already), let the load finish (a thread cannot be
            #    cancelled; --max-memory's preload stops at the next model), then release the pool.
            if budget is not None:
                loading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loading
            self.service.close()
            if self.prediction_log is not None:
                self.prediction_log.close()
            # 3. Export the spans still buffered.
            if self.tracing is not None:
                await asyncio.to_thread(self.tracing.shutdown)


async def _loaded() -> None:
    """Nothing to load: every model was loaded before this worker forked."""
