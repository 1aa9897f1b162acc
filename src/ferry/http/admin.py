"""Admin routes and ``--watch``: load, unload and reload model versions while serving.

Off unless ``--admin`` (routes) or ``--watch`` (polling the repository) is given. A new version
is loaded and warmed up in a thread, then switched to in one step on the event loop; one that
fails never takes traffic.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ferry.errors import ModelNotFound
from ferry.http.mounting import mount
from ferry.http.responses import json_response
from ferry.serving.registry import ModelHandle, ModelRegistry, ModelState, signature

logger = logging.getLogger("ferry.admin")

SETTLE_S = 1.0  # a bundle folder must be unchanged this long before --watch loads it (a copy may be running)


async def roll_out(registry: ModelRegistry, handles: list[ModelHandle]) -> list[dict[str, Any]]:
    """Load each new version in a thread, then switch to it on the loop; report what happened."""
    results = []
    for handle in handles:
        await asyncio.to_thread(registry.load, handle)
        registry.activate(handle)
        results.append(handle.describe())
    return results


class AdminEndpoints:
    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    def routes(self) -> list[Route]:
        return mount("admin", {"load": self.load, "unload": self.unload, "reload": self.reload})

    async def load(self, request: Request) -> Response:
        """Load versions of NAME found on disk that are not loaded yet."""
        name = request.path_params["name"]
        handles = self.registry.discover(name)
        if not handles and name not in self.registry.models:
            raise ModelNotFound(f"no bundle of model '{name}' in the repository")
        return self._answer(name, await roll_out(self.registry, handles))

    async def unload(self, request: Request) -> Response:
        name = request.path_params["name"]
        removed = self.registry.remove(name, request.query_params.get("version"))
        return json_response({"model": name, "unloaded": [h.version for h in removed]})

    async def reload(self, request: Request) -> Response:
        """New versions if there are any, else the newest version again from disk (hashes re-checked)."""
        name = request.path_params["name"]
        handles = self.registry.discover(name)
        if not handles:
            if name not in self.registry.models:
                raise ModelNotFound(f"model '{name}' not found")
            newest = self.registry.newest(name)
            handles = [ModelHandle(name, newest.version, newest.path)]
        return self._answer(name, await roll_out(self.registry, handles))

    def _answer(self, name: str, results: list[dict[str, Any]]) -> Response:
        default = self.registry.default_version(name)
        failed = any(r["state"] == ModelState.FAILED.value for r in results)
        return json_response({"model": name, "default_version": default, "loaded": results}, 409 if failed else 200)


async def watch(registry: ModelRegistry, interval: float = 1.0) -> None:
    """Poll the repository and roll out new versions once their folders have settled."""
    while True:
        await asyncio.sleep(interval)
        try:
            settled = [h for h in registry.discover() if time.time() - signature(h.path)[1] >= SETTLE_S]
            if settled:
                for result in await roll_out(registry, settled):
                    logger.info("watch: %s", result)
        except Exception:  # one bad scan must not end the watcher
            logger.exception("watch: scanning %s failed", registry.repo)


__all__ = ["AdminEndpoints", "roll_out", "watch"]
