"""What a client may ask of the models besides inference: liveness, readiness, metadata and labels.

Transport-free, like ``DataPlane.infer``: HTTP (native, v2, KServe v1), the probe port and gRPC each
ask ``ModelQueries`` and only encode its answer in their own format, so the same model reads the same
on every transport. ``ask`` meters a per-model question once, for every transport, in the request
metrics that ``infer`` writes (``ferry_requests_total`` and ``ferry_request_duration_seconds``), and
puts its errors through the shared ``report`` policy.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ferry.errors import FerryError, ModelNotReady
from ferry.serving.dataplane import UNKNOWN_MODEL, DataPlane, report
from ferry.serving.registry import ModelHandle, ModelState

_T = TypeVar("_T")
Status = Callable[[Any, FerryError | None], str]  # (the answer, or the error) -> the ``status`` label


@dataclass(frozen=True, slots=True)
class Readiness:
    """The server's readiness: every model servable, not draining, and (on the probe port) the loop alive."""

    ready: bool
    models: list[dict[str, Any]]
    draining: bool
    stalled: bool = False

    def body(self) -> dict[str, Any]:
        """The native ``/ready`` body, which the probe port's ``/ready`` answers too."""
        body: dict[str, Any] = {"ready": self.ready, "models": self.models}
        if self.draining:
            body["draining"] = True
        if self.stalled:
            body["error"] = "the request loop is stalled"
        return body


class ModelQueries:
    """Liveness, readiness, metadata and labels of the models a ``DataPlane`` serves, metered once."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self.registry = plane.registry

    # -- the server ------------------------------------------------------------------------------
    def live(self) -> bool:
        """The process answers: HTTP ``/health``, v2 ``/v2/health/live``, gRPC ``ServerLive``."""
        return True

    def ready(self) -> bool:
        """HTTP ``/v2/health/ready``, gRPC ``ServerReady``: every model servable and not draining."""
        return self.registry.is_ready()

    def readiness(self, loop_live: bool = True) -> Readiness:
        """``/ready`` on the HTTP and the probe port: ``ready`` with each version's state; ``loop_live`` is
        the probe port's heartbeat (a stalled request loop is not ready)."""
        registry = self.registry
        return Readiness(
            loop_live and registry.is_ready(),
            [h.describe() for h in registry.handles()],
            registry.draining,
            not loop_live,
        )

    # -- one model -------------------------------------------------------------------------------
    async def loaded(self, name: str, version: str | None) -> ModelHandle:
        """The version asked for, loaded (under ``--max-memory`` an unloaded one loads now): metadata, labels,
        config. 404 when unknown, 503 when not ready."""
        budget = self.plane.budget
        if budget is None:
            return self.registry.get(name, version)
        handle = await budget.acquire(name, version)
        budget.release(handle)  # read at once, with no await between: it cannot be unloaded meanwhile
        return handle

    def available(self, name: str, version: str | None) -> ModelHandle:
        """The version asked for, ready to serve (under ``--max-memory`` UNLOADED is), not loaded; 404 when
        unknown, 503 when not ready. HTTP ``/models/{name}/health`` and v2's ``.../ready``."""
        if self.plane.budget is None:
            return self.registry.get(name, version)
        handle = self.registry.lookup(name, version)
        if handle.state is ModelState.FAILED:
            raise ModelNotReady(f"model '{name}' version '{handle.version}' is FAILED")
        return handle

    def model_ready(self, name: str, version: str | None) -> bool:
        """Whether ``available`` would serve it: gRPC ``ModelReady``. 404 when unknown, never 503."""
        if name not in self.registry.models:
            self.registry.get(name)  # the 404 that lists the served models
        try:
            self.available(name, version)
        except FerryError as exc:
            if exc.status != 503:
                raise
            return False
        return True

    def any_ready(self, name: str) -> bool:
        """Whether some version of ``name`` serves (KServe v1's status); 404 when unknown."""
        if name not in self.registry.models:
            self.registry.get(name)  # the 404 that lists the served models
        servable = (ModelState.READY, ModelState.UNLOADED, ModelState.LOADING) if self.registry.lazy else ()
        versions = self.registry.models[name].values()
        return any(h.state is ModelState.READY or h.state in servable for h in versions)

    def versions(self, handle: ModelHandle) -> list[str]:
        """The versions the server holds of the model (each protocol's metadata lists them)."""
        return list(self.registry.models[handle.name])

    async def labels(self, name: str, version: str | None) -> list[str]:
        handle = await self.loaded(name, version)
        assert handle.model is not None
        return list(handle.model.manifest.labels or [])

    # -- metering --------------------------------------------------------------------------------
    async def ask(
        self, protocol: str, route: str, model: str, question: Callable[[], Awaitable[_T]], status: Status
    ) -> _T:
        """Answer one per-model question, counted and timed once under (model, ``route``, ``protocol``), with
        ``status`` naming the answer's status label; an error is reported and raised as a ``FerryError``."""
        start = time.perf_counter()
        label = model if model in self.registry.models else UNKNOWN_MODEL  # never a client's unknown name
        meter = self.plane.meter(label, route, protocol)
        try:
            answer = await question()
        except Exception as exc:
            error = report(exc, self.plane.metrics, label)
            meter.count(status(None, error), time.perf_counter() - start)
            if error is exc:
                raise
            raise error from exc
        meter.count(status(answer, None), time.perf_counter() - start)
        return answer
