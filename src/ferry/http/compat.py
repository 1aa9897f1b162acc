"""Compatibility routes: a bundle's manifest declares the paths of the hand-written API it replaces."""

from __future__ import annotations

import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ferry.bundle.manifest import CompatRoute, read_manifest
from ferry.errors import FerryError, InvalidInput
from ferry.http.endpoints import ModelEndpoints
from ferry.http.responses import json_response, read_body
from ferry.protocol.native import parse_json
from ferry.serving.registry import ModelRegistry

logger = logging.getLogger("ferry.http")

RESERVED_PREFIXES = ("/health", "/ready", "/models", "/metrics", "/v1", "/v2", "/api", "/seldon", "/docs", "/openapi")


def routes(registry: ModelRegistry, endpoints: ModelEndpoints) -> list[Route]:
    """One Starlette route per declared compatibility route, from each model's newest manifest."""
    out: list[Route] = []
    taken: dict[tuple[str, str], str] = {}
    for name in registry.models:
        try:
            manifest = read_manifest(registry.newest(name).path)
        except FerryError:
            continue  # the load will fail too, and report it
        for spec in manifest.routes:
            key = (spec.method, spec.path)
            if spec.path.startswith(RESERVED_PREFIXES) and spec.path != "/":
                logger.warning(
                    "model %s: compatibility route %s %s clashes with a built-in route; ignored",
                    name,
                    spec.method,
                    spec.path,
                )
                continue
            if key in taken:
                logger.warning(
                    "model %s: compatibility route %s %s is already taken by model %s; ignored",
                    name,
                    spec.method,
                    spec.path,
                    taken[key],
                )
                continue
            taken[key] = name
            handler = endpoints.instrument(f"compat:{spec.path}", _handler(name, spec, endpoints), "compat")
            out.append(Route(spec.path, handler, methods=[spec.method]))
    return out


def health_paths(registry: ModelRegistry) -> list[str]:
    """Paths of the compatibility routes that answer health, such as ``/isAlive``."""
    paths = []
    for name in registry.models:
        try:
            manifest = read_manifest(registry.newest(name).path)
        except FerryError:
            continue
        paths += [r.path for r in manifest.routes if r.action == "health"]
    return paths


def _handler(name: str, spec: CompatRoute, endpoints: ModelEndpoints) -> Any:
    async def endpoint(request: Request) -> Response:
        request.path_params["name"] = name
        handle = endpoints.registry.get(name)
        if spec.action == "health":
            return json_response(_shape(True, spec.response_key))
        payload = await _payload(request, spec, endpoints, handle.codec)
        result = await endpoints.predict_payload(handle, payload)
        value = result["prediction"] if "prediction" in result else result["predictions"]
        return json_response(_shape(value, spec.response_key))

    return endpoint


async def _payload(request: Request, spec: CompatRoute, endpoints: ModelEndpoints, codec: Any) -> Any:
    source = spec.input.source
    if source == "query":
        dtypes = {f.name: f.dtype for f in codec.features}
        record: dict[str, Any] = {}
        for param, feature in spec.input.names.items():
            raw = request.query_params.get(param)
            if raw is None:
                raise InvalidInput(f"missing query parameter '{param}'", f"?{param}")
            record[feature] = _parse_query_value(raw, dtypes.get(feature, "float64"), param)
        return record
    settings = endpoints.settings
    body = parse_json(await read_body(request, settings.max_body_bytes, settings.body_timeout))
    if source == "body_key":
        key = spec.input.key or ""
        if not isinstance(body, dict) or key not in body:
            raise InvalidInput(f"missing field '{key}'", f"$.{key}")
        return body[key]
    return body


def _parse_query_value(raw: str, dtype: str, param: str) -> Any:
    if dtype == "string":
        return raw
    try:
        return int(raw) if dtype.startswith("int") else float(raw)
    except ValueError:
        raise InvalidInput(f"Expected a number, got '{raw[:40]}'", f"?{param}") from None


def _shape(value: Any, key: str | None) -> Any:
    return value if key is None else {key: value}
