"""Standard protocols' routes besides predicting (Open Inference v2, KServe v1): health, metadata, indexes.

Their predict routes (v2 infer, v1 predict and explain, Seldon predictions) are served by ``ferry.http.dispatch``.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ferry.http.endpoints import ModelEndpoints
from ferry.http.mounting import mount
from ferry.http.responses import json_response
from ferry.protocol import v2
from ferry.serving.registry import ModelHandle


class ProtocolEndpoints:
    def __init__(self, endpoints: ModelEndpoints) -> None:
        self.endpoints = endpoints
        self.registry = endpoints.registry
        self.queries = endpoints.queries

    def routes(self) -> list[Route]:
        """The ``protocols`` rows of the route table; the per-model ones counted and timed."""
        instrument = self.endpoints.instrument
        return mount(
            "protocols",
            {
                "v2_live": self.v2_live,
                "v2_ready": self.v2_ready,
                "v2_server_metadata": self.v2_server_metadata,
                "v1_models": self.v1_models,
                "v1:status": instrument("v1:status", self.v1_status, "kserve"),
                "v2_models": self.v2_models,
                "v2_repository_index": self.v2_repository_index,
                "v2:metadata": instrument("v2:metadata", self.v2_model_metadata, "v2"),
                "v2:ready": instrument("v2:ready", self.v2_model_ready, "v2"),
                "v2:config": instrument("v2:config", self.v2_model_config, "v2"),
            },
        )

    async def handle(self, request: Request) -> ModelHandle:
        return await self.endpoints.handle(request)

    # -- Open Inference Protocol v2 -----------------------------------------------------------------
    async def v2_live(self, request: Request) -> Response:
        return json_response({"live": True})

    async def v2_ready(self, request: Request) -> Response:
        ready = self.queries.ready()
        return json_response({"ready": ready}, 200 if ready else 503)

    async def v2_server_metadata(self, request: Request) -> Response:
        return json_response(v2.server_metadata())

    async def v2_model_metadata(self, request: Request) -> Response:
        handle = await self.handle(request)
        explanation = self.queries.plane.explanation(handle)
        return json_response(v2.model_metadata(handle, self.queries.versions(handle), explanation))

    async def v2_model_ready(self, request: Request) -> Response:
        handle = self.endpoints.available(request)  # 404 when unknown, 503 when not ready
        return json_response({"name": handle.name, "version": handle.version, "ready": True})

    async def v2_models(self, request: Request) -> Response:
        """The served models' names, as KServe's ``GET /v2/models``."""
        return json_response({"models": list(self.registry.models)})

    async def v2_repository_index(self, request: Request) -> Response:
        """Every version and its state, as Triton's and MLServer's repository index."""
        index = [_index_entry(h) for h in self.registry.handles()]
        return json_response(index)

    async def v2_model_config(self, request: Request) -> Response:
        return json_response(v2.model_config(await self.handle(request)))

    # -- KServe v1 --------------------------------------------------------------------------------
    async def v1_models(self, request: Request) -> Response:
        return json_response({"models": list(self.registry.models)})

    async def v1_status(self, request: Request) -> Response:
        name = request.path_params["name"]
        ready = self.queries.any_ready(name)
        return json_response({"name": name, "ready": ready}, 200 if ready else 503)


def _index_entry(handle: ModelHandle) -> dict[str, Any]:
    entry = {"name": handle.name, "version": handle.version, "state": handle.state.value}
    entry["reason"] = handle.error or ""
    return entry
