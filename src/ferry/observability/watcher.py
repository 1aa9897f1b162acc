"""A per-worker loop that copies registry state into metrics: model states, load and eviction counts, live gauges.

The registry knows nothing of metrics: it counts each load (``load`` or ``reload``, ``ready`` or
``failed``) and each eviction as it happens (``ModelRegistry.events``), and this adds what was
counted since its last sample, about once a second, so none is missed however short-lived.
"""

from __future__ import annotations

import asyncio
import logging

from ferry.serving.metrics import Metrics
from ferry.serving.registry import ModelRegistry, ModelState

logger = logging.getLogger("ferry.metrics")


class ModelWatcher:
    def __init__(self, registry: ModelRegistry, metrics: Metrics) -> None:
        self.registry = registry
        self.metrics = metrics
        self._loads: dict[tuple[str, str, str, str], int] = {}  # counts already added to the metrics
        self._evictions: dict[tuple[str, str], int] = {}

    def sample(self) -> None:
        states = []
        for handle in self.registry.handles():
            held = handle.state in (ModelState.READY, ModelState.LOADING)
            states.append((handle.name, handle.version, handle.state.value, handle.bytes if held else 0))
        loads, evictions = self.registry.events.totals()
        for key, count in loads.items():
            if count > self._loads.get(key, 0):
                self.metrics.model_loads.labels(*key).inc(count - self._loads.get(key, 0))
                self._loads[key] = count
        for version, count in evictions.items():
            if count > self._evictions.get(version, 0):
                self.metrics.model_evictions.labels(*version).inc(count - self._evictions.get(version, 0))
                self._evictions[version] = count
        self.metrics.set_states(states)

    async def run(self, interval_s: float = 1.0) -> None:
        while True:
            try:
                self.sample()
                self.metrics.refresh()
            except Exception:  # a failed sample must not end the loop; the next one may succeed
                logger.exception("sampling model state into metrics failed")
            await asyncio.sleep(interval_s)
