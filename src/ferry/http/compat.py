"""Compatibility routes: a bundle's manifest declares the paths of the hand-written API it replaces."""

from __future__ import annotations

import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ferry.bundle.manifest import CompatRoute, Manifest, read_manifest
from ferry.errors import FerryError, InvalidInput
from ferry.http.endpoints import ModelEndpoints
from ferry.http.responses import json_response, read_body
from ferry.protocol.native import parse_json
from ferry.serving.registry import ModelRegistry

logger = logging.getLogger("ferry.http")

# Set by ``ferry serve --routes`` on a routed request: (model, version) that a root route serves instead.
ROUTED_MODEL_KEY = "ferry.routed_model"

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


def paths(registry: ModelRegistry) -> set[str]:
    """Every root path a model declares (``/predict``, ``/label``): the ones ``--routes`` can route."""
    out: set[str] = set()
    for name in registry.models:
        try:
            manifest = read_manifest(registry.newest(name).path)
        except FerryError:
            continue
        out |= {r.path for r in manifest.routes if not r.path.startswith(RESERVED_PREFIXES) or r.path == "/"}
    return out


def _handler(name: str, spec: CompatRoute, endpoints: ModelEndpoints) -> Any:
    async def endpoint(request: Request) -> Response:
        model, version = request.scope.get(ROUTED_MODEL_KEY, (name, None))
        request.path_params["name"] = model
        handle = endpoints.registry.get(model, version)
        if spec.action == "health":
            return json_response(_shape(True, spec.response_key))
        assert handle.model is not None
        manifest = handle.model.manifest
        if spec.action == "labels":
            return json_response(_shape(manifest.labels or [], spec.response_key))
        if spec.action == "metadata":
            return json_response(_shape(reference_metadata(manifest), spec.response_key))
        if spec.action == "predict_test":
            if manifest.sample_input is None:
                raise InvalidInput("this bundle has no sample input", "sample_input")
            payload: Any = manifest.sample_input
        else:
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


def reference_metadata(manifest: Manifest) -> dict[str, Any]:
    """The data and prediction type and structure, in the shape of the hand-written reference services."""
    schema = manifest.input
    out: dict[str, Any]
    if schema.kind in ("image", "text"):
        sample = "base64 encoded image file" if schema.kind == "image" else "text"
        out = {"data_type": "str", "data_structure": "(1,1)", "data_sample": sample, "data_field": schema.field}
    elif schema.kind == "features":
        dtypes = sorted({f.dtype for f in schema.features})
        out = {"data_type": dtypes[0] if len(dtypes) == 1 else "mixed", "data_structure": f"(1,{len(schema.features)})"}
        out["data_sample"] = manifest.sample_input
    else:
        tensor = schema.tensors[0]
        shape = ",".join("-1" if d < 0 else str(d) for d in tensor.shape)
        out = {"data_type": tensor.dtype, "data_structure": f"({shape})", "data_sample": manifest.sample_input}
    if manifest.output.kind == "label":
        labels = manifest.labels or []
        out |= {"prediction_type": "float32", "prediction_structure": f"(1,{len(labels)})", "labels": labels}
    else:
        out |= {"prediction_type": manifest.output.dtype, "prediction_structure": "(1,1)"}
    if "image" in manifest.options:
        out["preprocessing"] = manifest.options["image"]
    return out


def _parse_query_value(raw: str, dtype: str, param: str) -> Any:
    if dtype == "string":
        return raw
    try:
        return int(raw) if dtype.startswith("int") else float(raw)
    except ValueError:
        raise InvalidInput(f"Expected a number, got '{raw[:40]}'", f"?{param}") from None


def _shape(value: Any, key: str | None) -> Any:
    return value if key is None else {key: value}
