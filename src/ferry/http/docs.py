"""The server's own OpenAPI document (native API and every standard protocol) and an offline docs page."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import Route

from ferry._version import __version__
from ferry.bundle.manifest import InputSchema, Manifest, read_manifest
from ferry.errors import FerryError
from ferry.http.mounting import mount
from ferry.http.responses import json_response
from ferry.protocol import schemas, v2
from ferry.protocol.routes import PREDICT, ROUTES, HttpRoute
from ferry.runtimes.explain import explanation_of
from ferry.serving.registry import ModelHandle, ModelRegistry

Explains = Callable[[ModelHandle], dict[str, Any]]  # a loaded version -> {method, ...} or {unavailable: why}


def exact(handle: ModelHandle) -> dict[str, Any]:
    """How a loaded version explains by its runtime alone (no model named for sampled explanations)."""
    assert handle.model is not None
    how: dict[str, Any] = explanation_of(handle.model.runtime, handle.model.manifest.runtime)
    return how


STATIC = Path(__file__).parent / "static" / "swagger-ui"
ASSETS = {"swagger-ui.css": "text/css", "swagger-ui-bundle.js": "text/javascript"}

# Relative URLs, so the page also works behind a path prefix; every asset is served by Ferry itself.
DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Ferry API</title>
  <link rel="stylesheet" href="docs/static/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="docs/static/swagger-ui-bundle.js"></script>
  <script>window.ui = SwaggerUIBundle({url: "openapi.json", dom_id: "#swagger-ui"});</script>
</body>
</html>
"""


def routes(registry: ModelRegistry, explanation: Explains = exact) -> list[Route]:
    """``explanation``: how a loaded version explains (``DataPlane.explanation``: exactly, or sampled where named)."""
    cache: dict[str, Any] = {}

    async def openapi(request: Request) -> Response:
        # Built on first use and again when the models change: a version loaded later is described too.
        key = [(h.name, h.version, id(h.model), registry.default_version(h.name)) for h in registry.handles()]
        if cache.get("key") != key:
            versions = sorted({v for vs in registry.models.values() for v in vs})
            document = openapi_document(served(registry, explanation), sorted(registry.models), versions)
            cache["key"], cache["document"] = key, document
        return json_response(cache["document"])

    async def docs(request: Request) -> Response:
        return HTMLResponse(DOCS_PAGE)

    async def asset(request: Request) -> Response:
        name = request.path_params["asset"]
        if name not in ASSETS:
            return json_response({"error": f"no asset '{name}'", "code": "http_404"}, 404)
        return FileResponse(STATIC / name, media_type=ASSETS[name])

    return mount("docs", {"openapi": openapi, "docs": docs, "asset": asset})


@dataclass(frozen=True)
class ServedModel:
    """What the document says of one model version: its input schema, v2 inputs and outputs."""

    name: str
    version: str
    schema: InputSchema
    v2_inputs: list[dict[str, Any]]
    outputs: list[str]
    default: bool  # the version a path without ``/versions/{version}`` serves
    any_name: bool = False  # its v2 matrix input takes any name (a model converted from MLServer)
    explainable: bool = True  # its explain routes answer (False: they could only answer 501, so are left out)


def served(registry: ModelRegistry, explanation: Explains = exact) -> list[ServedModel]:
    """Every version whose manifest is known (loaded, or readable from its bundle), in name and version order."""
    out = []
    for name in sorted(registry.models):
        default = registry.default_version(name)
        for version, handle in sorted(registry.models[name].items()):
            manifest = handle.model.manifest if handle.model is not None else _manifest(handle.path)
            if manifest is None:
                continue
            outputs = [s["name"] for s in v2.output_specs(handle)] if handle.model is not None else ["prediction"]
            if handle.model is None and manifest.output.kind == "label":
                outputs = ["label"]
            entry = ServedModel(
                name,
                version,
                manifest.input,
                v2.input_specs(manifest),
                outputs,
                version == default,
                v2.takes_any_name(manifest),
                handle.model is None or "unavailable" not in explanation(handle),
            )
            out.append(entry)
    return out


def _manifest(path: Path) -> Manifest | None:
    try:
        return read_manifest(path)
    except FerryError:
        return None


# -- the document ----------------------------------------------------------------------------------------
def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _path_params(*names: str) -> list[dict[str, Any]]:
    return [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in names]


def _served(document: dict[str, Any], models: list[str], versions: list[str]) -> None:
    """Path parameters list what this server serves, so clients (and fuzzers) reach the real models."""
    values = {"name": models, "version": versions}
    for item in document["paths"].values():
        for param in item.get("parameters", []):
            if values.get(param["name"]):
                param["schema"] = {"type": "string", "enum": values[param["name"]]}


# Every status a route can answer besides 200, each with the one error shape.
_STATUS = {
    "400": "Invalid request: the error names the field",
    "401": "Missing or wrong token (when the server asks for one)",
    "404": "Unknown model or version",
    "408": "The body arrived too slowly",
    "413": "Body too large",
    "415": "Unsupported Content-Encoding",
    "500": "The model failed",
    "503": "Model not ready, or the server is overloaded",
    "504": "The request's deadline passed",
}
_GET_STATUS = ("401", "404", "503")


def _errors(statuses: tuple[str, ...] | None = None) -> dict[str, Any]:
    return {k: _json(_ref("Error"), v) for k, v in _STATUS.items() if statuses is None or k in statuses}


def _get(tag: str, summary: str, schema: dict[str, Any] | None = None, errors: bool = True) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": _json(schema or {"type": "object"})}
    if errors:
        responses.update(_errors(_GET_STATUS))
    return {"get": {"tags": [tag], "summary": summary, "responses": responses}}


def _post(
    tag: str, summary: str, request: dict[str, Any], response: dict[str, Any], binary: bool = False
) -> dict[str, Any]:
    ok = _json(response)
    if binary:  # the binary tensor data extension: a JSON header, then raw tensors
        ok["content"]["application/octet-stream"] = {"schema": {"type": "string", "format": "binary"}}
    return {
        "post": {
            "tags": [tag],
            "summary": summary,
            "requestBody": {"required": True, "content": {"application/json": {"schema": request}}},
            "responses": {"200": ok, **_errors()},
        }
    }


_V2_DESCRIPTION = (
    "JSON, or the binary tensor data extension: an `Inference-Header-Content-Length` header gives the "
    "length of the JSON header, raw tensors follow it. The schema shows one row; any batch works, with "
    "`shape` `[n, ...]` and its values. A tabular model also takes one `[-1]` tensor per feature, named "
    "after it."
)


def _predict_operation(route: HttpRoute, model: ServedModel) -> dict[str, Any]:
    """A predict row's operation for one model version, with the request body its codec accepts."""
    schema, tag, summary = model.schema, route.protocol, route.summary
    if route.handler == "native":
        return _post(tag, summary, schemas.native_body(schema), _ref("Prediction"))
    if route.handler == "native:explain":
        return _explain(tag, summary, schemas.native_body(schema), "Explanation")
    if route.handler == "v2":
        v2_body = schemas.v2_body(schema, model.v2_inputs, model.outputs, model.any_name, v2.MATRIX_NAMES)
        infer = _post(tag, summary, v2_body, _ref("InferenceResponse"), True)
        infer["post"]["description"] = _V2_DESCRIPTION
        return infer
    if route.handler == "mlflow":
        return _post(tag, summary, schemas.mlflow_body(schema), _ref("MlflowResponse"))
    if route.handler == "kserve":
        return _post(tag, summary, schemas.kserve_body(schema), _ref("KServeResponse"))
    if route.handler == "kserve:explain":
        return _explain(tag, summary, schemas.kserve_body(schema), "KServeExplanation")
    if route.handler == "seldon":
        return _post(tag, summary, schemas.seldon_body(schema), _ref("SeldonMessage"))
    raise LookupError(f"no request body described for the predict codec {route.handler!r} of {route.path}")


# The predict rows described once per served model, with its own request schemas; the others as templates.
_PER_MODEL = [r for r in PREDICT if r.summary and r.handler != "sample"]


def _predict_routes(model: ServedModel, models: int) -> dict[str, Any]:
    """The predict paths of one model version: pinned to its version always; the paths without a
    version (and those naming no model, with one model served) for the default version only."""
    paths: dict[str, Any] = {}
    for route in _PER_MODEL:
        params = route.params
        if "version" not in params and not model.default:
            continue
        if "name" not in params and models != 1:  # the unnamed route serves the one model
            continue
        if route.handler.endswith(":explain") and not model.explainable:
            continue  # a model without an exact explanation: the route would only ever answer 501
        path = route.path.replace("{name}", model.name).replace("{version}", model.version)
        operation = _predict_operation(route, model)
        paths[path] = {"parameters": _path_params("namespace"), **operation} if "namespace" in params else operation
    return paths


def _explain(tag: str, summary: str, request: dict[str, Any], response: str) -> dict[str, Any]:
    """An explain route: what predict takes; contributions back (exact, or sampled where the operator named the
    model), or 501 for a model without them."""
    operation = _post(tag, summary, request, _ref(response))
    operation["post"]["responses"]["501"] = _json(
        _ref("Error"), "The model has no exact explanation (the error says why and lists the models that have one)"
    )
    return operation


# The response schema of a row that answers more than a plain object.
_RESPONSES = {"v2_server_metadata": "ServerMetadata", "v2:metadata": "ModelMetadata"}


def _template_operation(route: HttpRoute) -> dict[str, Any]:
    """A GET row: its response, and the error statuses where it names a model."""
    if route.handler == "metrics":
        text = {"text/plain": {"schema": {"type": "string"}}}
        responses = {"200": {"description": "OK", "content": text}}
        return {"get": {"tags": [route.protocol], "summary": route.summary, "responses": responses}}
    response = _RESPONSES.get(route.handler)
    return _get(route.protocol, route.summary, _ref(response) if response else None, errors="name" in route.params)


def openapi_document(described: list[ServedModel], models: list[str], versions: list[str]) -> dict[str, Any]:
    """The document: each served model's predict routes carry the request schemas its codecs accept."""
    paths: dict[str, Any] = {}
    for route in ROUTES:  # the routes that are the same for every model, with its name as a parameter
        if route.summary and route not in _PER_MODEL:
            operation = _template_operation(route)
            paths[route.path] = {"parameters": _path_params(*route.params), **operation} if route.params else operation
    for model in described:
        paths.update(_predict_routes(model, len(models)))
    document = {
        "openapi": "3.0.3",
        "info": {
            "title": "Ferry",
            "version": __version__,
            "description": "Native JSON API, Open Inference Protocol v2, KServe v1 and Seldon, over one service layer.",
        },
        "tags": [
            {"name": "native", "description": "Ferry's own JSON API"},
            {"name": "v2", "description": "Open Inference Protocol v2 (REST)"},
            {"name": "kserve", "description": "KServe v1"},
            {"name": "seldon", "description": "Seldon protocol"},
            {"name": "mlflow", "description": "MLflow's scoring protocol (mlflow models serve)"},
        ],
        "paths": paths,
        "components": {"schemas": _SCHEMAS},
    }
    _served(document, models, versions)
    return document


_TENSOR_DATA: dict[str, Any] = {
    "type": "array",
    "items": {
        "anyOf": [
            {"$ref": "#/components/schemas/TensorData"},
            {"type": "number"},
            {"type": "string"},
            {"type": "boolean"},
            {"type": "null", "description": "A missing value, in an FP16/FP32/FP64 tensor (JSON has no NaN)"},
        ]
    },
}
_DATATYPE = {
    "type": "string",
    "enum": [
        "BOOL",
        "UINT8",
        "UINT16",
        "UINT32",
        "UINT64",
        "INT8",
        "INT16",
        "INT32",
        "INT64",
        "FP16",
        "FP32",
        "FP64",
        "BYTES",
    ],
}
_SHAPE = {"type": "array", "items": {"type": "integer", "minimum": 0}}
# One tensor, as OIP v2 requests and responses both carry it.
_TENSOR = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "shape": _SHAPE,
        "datatype": _DATATYPE,
        "parameters": {"type": "object"},
        "data": _ref("TensorData"),
    },
}

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error", "code", "request_id"],
        "properties": {
            "error": {"type": "string", "description": "What is wrong, naming the field and the problem"},
            "code": {"type": "string", "description": "A stable, machine-readable name, such as invalid_input"},
            "field": {"type": "string", "description": "Where in the request, as a JSONPath such as $.inputs[0].name"},
            "request_id": {"type": "string", "description": "The X-Request-ID of the request, also in the logs"},
        },
    },
    "Prediction": {
        "type": "object",
        "description": "`prediction` for one record or row, `predictions` for a batch; classifiers add `probabilities`",
        "properties": {
            "prediction": {},
            "predictions": {"type": "array", "items": {}},
            "probabilities": {},
        },
    },
    "ServerMetadata": {
        "type": "object",
        "required": ["name", "version", "extensions"],
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "extensions": {"type": "array", "items": {"type": "string"}},
        },
    },
    "TensorMetadata": {
        "type": "object",
        "required": ["name", "datatype", "shape"],
        "properties": {
            "name": {"type": "string"},
            "datatype": _DATATYPE,
            "shape": {"type": "array", "items": {"type": "integer"}},
        },
    },
    "ModelMetadata": {
        "type": "object",
        "required": ["name", "platform", "inputs", "outputs"],
        "properties": {
            "name": {"type": "string"},
            "versions": {"type": "array", "items": {"type": "string"}},
            "platform": {"type": "string"},
            "inputs": {"type": "array", "items": _ref("TensorMetadata")},
            "outputs": {"type": "array", "items": _ref("TensorMetadata")},
        },
    },
    "TensorData": _TENSOR_DATA,
    "InferenceResponse": {
        "type": "object",
        "required": ["model_name", "outputs"],
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "outputs": {
                "type": "array",
                "items": _TENSOR,
            },
        },
    },
    "MlflowResponse": {
        "type": "object",
        "required": ["predictions"],
        "properties": {"predictions": {"type": "array", "items": {}}},
    },
    "Explanation": {
        "type": "object",
        "description": "Per row, each input column's share of the raw score: expected_value + sum = raw score; "
        "a classifier with several scores is keyed by class label. A sampled estimate (sampling_shapley, a model "
        "named by ferry serve --explain-sampled) adds each contribution's standard error, shaped alike",
        "required": ["contributions", "expected_value", "link", "method", "raw_scores"],
        "properties": {
            "contributions": {"type": "array", "items": {"type": "object"}},
            "expected_value": {},
            "raw_scores": {"type": "array", "items": {}},
            "link": {"type": "string", "enum": ["identity", "logit", "softmax", "log"]},
            "method": {"type": "string", "enum": ["tree_shap", "linear", "sampling_shapley"]},
            "standard_errors": {"type": "array", "items": {"type": "object"}},
            "positive_class": {},
            "predictions": {"type": "array", "items": {}},
        },
    },
    "KServeExplanation": {
        "type": "object",
        "required": ["predictions", "explanations"],
        "properties": {
            "predictions": {"type": "array", "items": {}},
            "explanations": {"type": "array", "items": {"type": "object"}},
        },
    },
    "KServeResponse": {
        "type": "object",
        "required": ["predictions"],
        "properties": {"predictions": {"type": "array", "items": {}}},
    },
    # Exactly one form: ``data`` (with one of ``ndarray`` and ``tensor``), ``strData``, ``jsonData``, ``binData``.
    "SeldonMessage": {
        "type": "object",
        "oneOf": [{"required": [form]} for form in ("data", "strData", "jsonData", "binData")],
        "properties": {
            "meta": {"type": "object"},
            "data": {
                "type": "object",
                "oneOf": [{"required": ["ndarray"]}, {"required": ["tensor"]}],
                "properties": {
                    "names": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
                    "ndarray": {"type": "array", "minItems": 1, "items": {}},
                    "tensor": {
                        "type": "object",
                        "required": ["shape", "values"],
                        "properties": {
                            "shape": {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 1}},
                            "values": {"type": "array", "items": {"type": "number"}},
                        },
                    },
                },
            },
            "strData": {"type": "string"},
            "jsonData": {},
            "binData": {"type": "string", "format": "byte"},
        },
    },
}
