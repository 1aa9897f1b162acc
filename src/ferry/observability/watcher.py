"""A per-worker loop that copies registry state into metrics: model states, load and reload events, live gauges.

The registry knows nothing of metrics; this samples it about once a second. A handle object seen
for the first time in a settled state (READY or FAILED) is one load event, or a reload when that
model version was held before.
"""

from __future__ import annotations

import asyncio
import logging
import weakref

from ferry.serving.metrics import Metrics
from ferry.serving.registry import ModelHandle, ModelRegistry, ModelState

logger = logging.getLogger("ferry.metrics")


class ModelWatcher:
    def __init__(self, registry: ModelRegistry, metrics: Metrics) -> None:
        self.registry = registry
        self.metrics = metrics
        self._seen: dict[tuple[str, str], weakref.ref[ModelHandle]] = {}

    def sample(self) -> None:
        states = []
        for handle in self.registry.handles():
            held = handle.state in (ModelState.READY, ModelState.LOADING)
            states.append((handle.name, handle.version, handle.state.value, handle.bytes if held else 0))
            if handle.state in (ModelState.LOADING, ModelState.UNLOADED):
                continue
            key = (handle.name, handle.version)
            seen = self._seen.get(key)
            if seen is not None and seen() is handle:
                continue
            kind = "load" if seen is None else "reload"
            result = "ready" if handle.state is ModelState.READY else "failed"
            self.metrics.model_loads.labels(handle.name, handle.version, kind, result).inc()
            self._seen[key] = weakref.ref(handle)
        self.metrics.set_states(states)

    async def run(self, interval_s: float = 1.0) -> None:
        while True:
            try:
                self.sample()
                self.metrics.refresh()
            except Exception:  # a failed sample must not end the loop; the next one may succeed
                logger.exception("sampling model state into metrics failed")
            await asyncio.sleep(interval_s)
