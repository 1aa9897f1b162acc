"""Many models under a memory budget (``ferry serve --max-memory``): load on demand, unload the least recently used.

At start the index is verified (manifests and artifact hashes), which is what readiness means;
then models load at start while they fit (``--preload``), else on their first request. A cold load
runs in a thread, at most ``LOAD_SLOTS`` at once, and concurrent first requests for one model share
it, so other models' requests never wait behind it. Before a load, the least recently used READY
models with no request in flight are unloaded until the estimated bytes fit the budget.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable

from ferry.errors import ModelNotReady
from ferry.serving.registry import ModelHandle, ModelRegistry, ModelState

logger = logging.getLogger("ferry.budget")

LOAD_SLOTS = 4  # cold loads at once: enough to overlap file reads, few enough to leave the CPUs to requests
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)b?\s*", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes from ``1GiB``, ``512MiB``, ``1.5G``, ``800MB`` or ``1000000``; ValueError naming the form otherwise."""
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ValueError(f"--max-memory must be a size like 1GiB, 512MiB or 800MB, got '{text[:40]}'")
    number, unit, binary = match.groups()
    power = "bkmgt".index(unit.lower() or "b")
    scale = (1024 if binary else 1000) ** power
    size = int(float(number) * scale)
    if size <= 0:
        raise ValueError(f"--max-memory must be more than 0, got '{text[:40]}'")
    return size


Unload = Callable[[ModelHandle], None]  # told before a model is unloaded, to drop what refers to it


class MemoryBudget:
    """Loads models on demand within ``limit`` estimated bytes; the data plane holds a model while it predicts."""

    def __init__(
        self, registry: ModelRegistry, limit: int, preload: bool = True, on_unload: Unload | None = None
    ) -> None:
        self.registry = registry
        self.limit = limit
        self.preload = preload
        self.on_unload = on_unload
        self._slots = asyncio.Semaphore(LOAD_SLOTS)
        self._loads: dict[int, asyncio.Task[None]] = {}  # id(handle) -> its one cold load
        self._clock = 0
        registry.on_change(self.trim)  # a version rolled out by reload or --watch counts against the budget

    async def start(self) -> None:
        """Verify the index (readiness), then preload the newest version of each model while it fits."""
        await asyncio.to_thread(self.registry.index)
        if not self.preload:
            return
        for name in list(self.registry.models):
            try:
                handle = self.registry.lookup(name)
            except Exception:  # removed meanwhile
                continue
            if handle.state is ModelState.UNLOADED and self.loaded_bytes() + handle.bytes <= self.limit:
                await self._load(handle)

    def loaded_bytes(self) -> int:
        held = (ModelState.READY, ModelState.LOADING)
        return sum(h.bytes for h in self.registry.handles() if h.state in held)

    async def acquire(self, name: str, version: str | None) -> ModelHandle:
        """The model version a request means, loaded; call ``release`` when the request is done with it."""
        handle = self.registry.lookup(name, version)
        while handle.state is not ModelState.READY:
            if handle.state is ModelState.FAILED:
                raise ModelNotReady(f"model '{name}' version '{handle.version}' is FAILED: {handle.error}")
            await self._load(handle)
        handle.in_flight += 1
        self._clock += 1
        handle.last_used = self._clock
        return handle

    def release(self, handle: ModelHandle) -> None:
        handle.in_flight -= 1

    async def _load(self, handle: ModelHandle) -> None:
        """Join the load of ``handle`` under way, or start it; a client that leaves does not cancel it."""
        task = self._loads.get(id(handle))
        if task is None:
            task = self._loads[id(handle)] = asyncio.create_task(self._cold_load(handle))
            task.add_done_callback(lambda _: self._loads.pop(id(handle), None))
        await asyncio.shield(task)

    async def _cold_load(self, handle: ModelHandle) -> None:
        async with self._slots:
            if handle.state is not ModelState.UNLOADED:
                return
            self._make_room(handle.bytes, keep=handle)
            handle.state = ModelState.LOADING  # its bytes count from now, so parallel loads cannot overshoot
            await asyncio.to_thread(self.registry.load, handle)
            self._clock += 1
            handle.last_used = self._clock

    def trim(self) -> None:
        """Unload least recently used models until the loaded ones fit (after a reload added one)."""
        for handle in self.registry.handles():
            if handle.state is ModelState.READY and not handle.last_used:  # just rolled out: the newest use
                self._clock += 1
                handle.last_used = self._clock
        self._make_room(0)

    def _make_room(self, needed: int, keep: ModelHandle | None = None) -> None:
        """Unload least recently used idle models until ``needed`` more bytes fit; models in flight stay."""
        loaded = self.loaded_bytes()
        if loaded + needed <= self.limit:
            return
        idle = [h for h in self.registry.handles() if h.state is ModelState.READY and not h.in_flight and h is not keep]
        idle.sort(key=lambda h: h.last_used)
        for victim in idle:
            if loaded + needed <= self.limit:
                return
            loaded -= victim.bytes
            if self.on_unload is not None:
                self.on_unload(victim)
            self.registry.unload(victim)
        if loaded + needed > self.limit:
            logger.warning("memory budget: %d bytes held by models in flight; loading over the budget", loaded)
