"""Compatibility routes: a bundle's manifest declares the paths of the hand-written API it replaces."""

from __future__ import annotations

import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ferry.bundle.manifest import CompatRoute, Manifest
from ferry.errors import FerryError
from ferry.http.responses import json_response
from ferry.protocol.routes import RESERVED_PREFIXES  # every built-in route's first segment
from ferry.routing.keys import ROUTED_MODEL_KEY
from ferry.serving.registry import ModelRegistry

logger = logging.getLogger("ferry.http")

PREDICTING = ("predict", "predict_test")  # actions served by the predict dispatcher, the others here


def declared(registry: ModelRegistry, warn: bool = False) -> list[tuple[str, CompatRoute]]:
    """(model, route) for every compatibility route that takes effect, from each model's newest manifest.

    A route on a built-in prefix, or one another model declared first, is ignored (with a warning).
    """
    out: list[tuple[str, CompatRoute]] = []
    taken: dict[tuple[str, str], str] = {}
    for name in list(registry.models):
        try:
            declared_routes = registry.compat_routes(name)
        except FerryError:
            continue  # the load will fail too, and report it
        for spec in declared_routes:
            key = (spec.method, spec.path)
            if spec.path.startswith(RESERVED_PREFIXES) and spec.path != "/":
                if warn:
                    logger.warning(
                        "model %s: compatibility route %s %s clashes with a built-in route; ignored",
                        name,
                        spec.method,
                        spec.path,
                    )
                continue
            if key in taken:
                if warn:
                    logger.warning(
                        "model %s: compatibility route %s %s is already taken by model %s; ignored",
                        name,
                        spec.method,
                        spec.path,
                        taken[key],
                    )
                continue
            taken[key] = name
            out.append((name, spec))
    return out


def routes(registry: ModelRegistry) -> list[Route]:
    """Starlette routes for the compatibility routes that do not predict (health, labels, metadata)."""
    return [
        Route(spec.path, _handler(name, spec, registry), methods=[spec.method])
        for name, spec in declared(registry, warn=True)
        if spec.action not in PREDICTING
    ]


def health_routes(registry: ModelRegistry) -> set[tuple[str, str]]:
    """(method, path) of the accepted compatibility routes that answer health, such as ``GET /isAlive``."""
    return {(spec.method, spec.path) for _, spec in declared(registry) if spec.action == "health"}


def paths(registry: ModelRegistry) -> set[str]:
    """Every root path a model declares (``/predict``, ``/label``): the ones ``--routes`` can route."""
    out: set[str] = set()
    for name in registry.models:
        try:
            declared_routes = registry.compat_routes(name)
        except FerryError:
            continue
        out |= {r.path for r in declared_routes if not r.path.startswith(RESERVED_PREFIXES) or r.path == "/"}
    return out


def _handler(name: str, spec: CompatRoute, registry: ModelRegistry) -> Any:
    async def endpoint(request: Request) -> Response:
        model, version = request.scope.get(ROUTED_MODEL_KEY) or (name, None)
        handle = registry.get(model, version)
        if spec.action == "health":
            return json_response(_shape(True, spec.response_key))
        assert handle.model is not None
        manifest = handle.model.manifest
        if spec.action == "labels":
            return json_response(_shape(manifest.labels or [], spec.response_key))
        return json_response(_shape(reference_metadata(manifest), spec.response_key))

    return endpoint


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


def _shape(value: Any, key: str | None) -> Any:
    return value if key is None else {key: value}
