"""The model registry: name@version -> handle with a state, loaded off the event loop."""

from __future__ import annotations

import enum
import gc
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ferry.bundle.load import LoadedModel, load_bundle
from ferry.bundle.repository import scan_repository
from ferry.errors import FerryError, ModelNotFound, ModelNotReady
from ferry.serving.inputs import InputCodec

logger = logging.getLogger("ferry.registry")


class ModelState(enum.StrEnum):
    LOADING = "LOADING"
    READY = "READY"
    FAILED = "FAILED"


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

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"name": self.name, "version": self.version, "state": self.state.value}
        if self.error:
            info["error"] = self.error
        if self.warnings:
            info["warnings"] = self.warnings
        return info


class ModelRegistry:
    """Holds every version of every model in a repository, and picks the one a request means."""

    def __init__(self, repo: Path, trust_pickle: bool = False) -> None:
        self.repo = repo
        self.trust_pickle = trust_pickle
        self.models: dict[str, dict[str, ModelHandle]] = {}
        self._defaults: dict[str, ModelHandle] = {}  # newest READY version per model, kept on every load
        for name, refs in scan_repository(repo).items():
            self.models[name] = {r.version: ModelHandle(name, r.version, r.path) for r in refs}

    def handles(self) -> list[ModelHandle]:
        return [h for versions in self.models.values() for h in versions.values()]

    def load_all(self) -> None:
        for handle in self.handles():
            self.load(handle)
        # Move everything loaded so far out of the collector's reach: a full collection over the
        # frameworks' objects otherwise pauses the event loop for tens of milliseconds.
        gc.collect()
        gc.freeze()

    def load(self, handle: ModelHandle) -> None:
        """Load one bundle; a failure marks it FAILED and is logged, never raised to the others."""
        try:
            loaded = load_bundle(handle.path, trust_pickle=self.trust_pickle)
            handle.codec = InputCodec(loaded.manifest.input)
            handle.model, handle.warnings = loaded, loaded.warnings
            handle.state, handle.error = ModelState.READY, None
            logger.info("model %s:%s READY", handle.name, handle.version)
            self._refresh_default(handle.name)
        except FerryError as exc:
            handle.state, handle.error = ModelState.FAILED, exc.message
            logger.error("model %s:%s FAILED to load: %s", handle.name, handle.version, exc.message)
        except Exception as exc:  # a broken artifact can raise anything; it must not stop the others
            handle.state, handle.error = ModelState.FAILED, f"{type(exc).__name__}: {exc}"
            logger.exception("model %s:%s FAILED to load", handle.name, handle.version)

    def _refresh_default(self, name: str) -> None:
        ready = [h for h in self.models[name].values() if h.state is ModelState.READY]
        if ready:
            self._defaults[name] = ready[-1]

    def get(self, name: str, version: str | None = None) -> ModelHandle:
        """The pinned version, or the newest READY one; 404 for unknown, 503 when none is ready."""
        versions = self.models.get(name)
        if versions is None:
            known = ", ".join(sorted(self.models)) or "none"
            raise ModelNotFound(f"model '{name}' not found; served models: {known}")
        if version is not None:
            handle = versions.get(version)
            if handle is None:
                raise ModelNotFound(f"model '{name}' has no version '{version}'; versions: {', '.join(versions)}")
        else:
            handle = self._defaults.get(name) or list(versions.values())[-1]
        if handle.state is not ModelState.READY:
            raise ModelNotReady(f"model '{name}' version '{handle.version}' is {handle.state.value}")
        return handle

    def newest(self, name: str) -> ModelHandle:
        return list(self.models[name].values())[-1]

    def is_ready(self) -> bool:
        """Every model has a READY version, and nothing is still loading."""
        if not self.models:
            return False
        if any(h.state is ModelState.LOADING for h in self.handles()):
            return False
        return all(any(h.state is ModelState.READY for h in v.values()) for v in self.models.values())
