"""A model version as the registry holds it: its state, the loaded model and what serving needs of it."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ferry.bundle.manifest import CompatRoute
from ferry.runtimes.load import LoadedModel
from ferry.serving.inputs import InputCodec


class ModelState(enum.StrEnum):
    LOADING = "LOADING"
    READY = "READY"
    FAILED = "FAILED"
    UNLOADED = "UNLOADED"  # verified and routable, loaded on its next request (``--max-memory``)


@dataclass
class ModelHandle:
    name: str
    version: str
    path: Path
    state: ModelState = ModelState.LOADING
    error: str | None = None
    model: LoadedModel | None = None
    codec: InputCodec | None = None
    warnings: list[str] = field(default_factory=list)
    compute_s: float | None = None  # one model call on the sample input, measured at warm-up
    signature: tuple[int, float] = (0, 0.0)  # files and newest mtime in the bundle folder, at load
    bytes: int = 0  # estimated memory when loaded (``--max-memory``), from its artifacts
    in_flight: int = 0  # requests holding it now; a model with any is never unloaded
    last_used: int = 0  # a tick of the memory budget's clock, for least-recently-used unloading
    routes: list[CompatRoute] | None = None  # the compatibility routes its manifest declares, once read

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"name": self.name, "version": self.version, "state": self.state.value}
        if self.error:
            info["error"] = self.error
        if self.warnings:
            info["warnings"] = self.warnings
        if self.bytes:
            info["bytes"] = self.bytes if self.state in (ModelState.READY, ModelState.LOADING) else 0
        return info
