"""Standard protocol routes (Open Inference v2, KServe v1, Seldon): decode, call the one service, encode."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ferry.errors import InvalidInput
from ferry.http.endpoints import Endpoint, ModelEndpoints, parse_timeout
from ferry.http.responses import json_response, read_body
from ferry.protocol import kserve, seldon, v2, v2_rest
from ferry.protocol.native import parse_json
from ferry.serving.registry import ModelHandle, ModelState

SELDON_VERSIONS = ("v1.0", "v0.1")


class ProtocolEndpoints:
    def __init__(self, endpoints: ModelEndpoints) -> None:
        self.endpoints = endpoints
        self.registry = endpoints.registry
        self.service = endpoints.service
        self.limit, self.body_timeout = endpoints.settings.max_body_bytes, endpoints.settings.body_timeout

    def routes(self) -> list[Route]:
        instrument = self.endpoints.instrument
        routes = [
            Route("/v2/health/live", self.v2_live, methods=["GET"]),
            Route("/v2/health/ready", self.v2_ready, methods=["GET"]),
            Route("/v2", self.v2_server_metadata, methods=["GET"]),
            Route("/v2/", self.v2_server_metadata, methods=["GET"]),
            Route("/v1/models", self.v1_models, methods=["GET"]),
            Route("/v1/models/{name}", instrument("v1:status", self.v1_status, "kserve"), methods=["GET"]),
            Route("/v1/models/{name}:predict", instrument("v1:predict", self.v1_predict, "kserve"), methods=["POST"]),
        ]
        per_model = [
            ("", "v2:metadata", self.v2_model_metadata, "GET"),
            ("/ready", "v2:ready", self.v2_model_ready, "GET"),
            ("/infer", "v2:infer", self.v2_infer, "POST"),
        ]
        for suffix, route, handler, method in per_model:
            wrapped = instrument(route, handler, "v2")
            routes.append(Route("/v2/models/{name}" + suffix, wrapped, methods=[method]))
            routes.append(Route("/v2/models/{name}/versions/{version}" + suffix, wrapped, methods=[method]))
        seldon_named = instrument("seldon:predictions", self.seldon_predict, "seldon")
        seldon_unnamed = self._name_the_only_model(seldon_named)
        for version in SELDON_VERSIONS:
            path = f"/api/{version}/predictions"
            routes.append(Route(path, seldon_unnamed, methods=["POST"]))
            routes.append(Route("/seldon/{name}" + path, seldon_named, methods=["POST"]))
            routes.append(Route("/seldon/{namespace}/{name}" + path, seldon_named, methods=["POST"]))
        return routes

    def handle(self, request: Request) -> ModelHandle:
        return self.registry.get(request.path_params["name"], request.path_params.get("version"))

    # -- Open Inference Protocol v2 -----------------------------------------------------------------
    async def v2_live(self, request: Request) -> Response:
        return json_response({"live": True})

    async def v2_ready(self, request: Request) -> Response:
        ready = self.registry.is_ready()
        return json_response({"ready": ready}, 200 if ready else 503)

    async def v2_server_metadata(self, request: Request) -> Response:
        return json_response(v2.server_metadata())

    async def v2_model_metadata(self, request: Request) -> Response:
        return json_response(v2.model_metadata(self.handle(request), self.registry))

    async def v2_model_ready(self, request: Request) -> Response:
        handle = self.handle(request)  # 404 when unknown, 503 when not ready
        return json_response({"name": handle.name, "version": handle.version, "ready": True})

    async def v2_infer(self, request: Request) -> Response:
        handle = self.handle(request)
        body = await read_body(request, self.limit, self.body_timeout)
        infer = v2_rest.decode_request(body, request.headers.get(v2_rest.HEADER_LENGTH))
        v2.check_requested(infer, handle)
        timeout = parse_timeout(request.headers.get("x-request-timeout"))
        prediction = await self.service.predict(handle, v2.to_batch(infer.inputs, handle), timeout)
        outputs = v2.to_outputs(prediction, handle, infer)
        content, headers = v2_rest.encode_response(infer, handle.name, handle.version, outputs)
        media_type = "application/octet-stream" if headers else "application/json"
        return Response(content, 200, headers, media_type=media_type)

    # -- KServe v1 --------------------------------------------------------------------------------
    async def v1_models(self, request: Request) -> Response:
        return json_response({"models": list(self.registry.models)})

    async def v1_status(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in self.registry.models:
            self.registry.get(name)  # raises the 404 that lists the served models
        ready = any(h.state is ModelState.READY for h in self.registry.models[name].values())
        return json_response({"name": name, "ready": ready}, 200 if ready else 503)

    async def v1_predict(self, request: Request) -> Response:
        handle = self.handle(request)
        assert handle.codec is not None
        batch = kserve.decode_request(parse_json(await read_body(request, self.limit, self.body_timeout)), handle.codec)
        return json_response(kserve.encode_response(await self.service.predict(handle, batch)))

    # -- Seldon -----------------------------------------------------------------------------------
    async def seldon_predict(self, request: Request) -> Response:
        handle = self.handle(request)
        assert handle.codec is not None and handle.model is not None
        body = await read_body(request, self.limit, self.body_timeout)
        message = seldon.decode_request(parse_json(body), handle.codec)
        prediction = await self.service.predict(handle, message.batch)
        return json_response(seldon.encode_response(message, prediction, handle.model.manifest.labels))

    def _name_the_only_model(self, endpoint: Endpoint) -> Endpoint:
        """``/api/v1.0/predictions`` names no model: fine with one served, a 400 listing them with several."""

        async def unnamed(request: Request) -> Response:
            names = sorted(self.registry.models)
            if len(names) == 1:
                request.path_params["name"] = names[0]
                return await endpoint(request)
            error = InvalidInput(
                f"{len(names)} models are served ({', '.join(names) or 'none'}); name one: "
                f"POST /seldon/{{model}}{request.url.path}"
            )
            return json_response(error.to_dict(), 400)

        return unnamed
