"""The server's own OpenAPI document (native API and every standard protocol) and an offline docs page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import Route

import ferry
from ferry.http.responses import json_response
from ferry.serving.registry import ModelRegistry

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


def routes(registry: ModelRegistry) -> list[Route]:
    versions = sorted({v for vs in registry.models.values() for v in vs})
    document = openapi_document(sorted(registry.models), versions)

    async def openapi(request: Request) -> Response:
        return json_response(document)

    async def docs(request: Request) -> Response:
        return HTMLResponse(DOCS_PAGE)

    async def asset(request: Request) -> Response:
        name = request.path_params["asset"]
        if name not in ASSETS:
            return json_response({"error": f"no asset '{name}'", "code": "http_404"}, 404)
        return FileResponse(STATIC / name, media_type=ASSETS[name])

    return [
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/docs", docs, methods=["GET"]),
        Route("/docs/static/{asset}", asset, methods=["GET"]),
    ]


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


_ERRORS = {
    "400": _json(_ref("Error"), "Invalid request"),
    "404": _json(_ref("Error"), "Unknown model or version"),
    "413": _json(_ref("Error"), "Body too large"),
    "503": _json(_ref("Error"), "Model not ready"),
}


def _get(tag: str, summary: str, schema: dict[str, Any] | None = None, errors: bool = True) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": _json(schema or {"type": "object"})}
    if errors:
        responses.update({k: v for k, v in _ERRORS.items() if k in ("404", "503")})
    return {"get": {"tags": [tag], "summary": summary, "responses": responses}}


def _post(tag: str, summary: str, request: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    return {
        "post": {
            "tags": [tag],
            "summary": summary,
            "requestBody": {"required": True, "content": {"application/json": {"schema": request}}},
            "responses": {"200": _json(response), **_ERRORS},
        }
    }


def _per_model(paths: dict[str, Any], prefix: str, suffix: str, operation: dict[str, Any]) -> None:
    """The route for the default version and the one pinned to ``{version}``."""
    for path, params in (
        (f"{prefix}{suffix}", ("name",)),
        (f"{prefix}/versions/{{version}}{suffix}", ("name", "version")),
    ):
        paths[path] = {"parameters": _path_params(*params), **operation}


def openapi_document(models: list[str] | None = None, versions: list[str] | None = None) -> dict[str, Any]:
    paths: dict[str, Any] = {
        "/health": _get("native", "Liveness", errors=False),
        "/ready": _get("native", "Readiness of every model", errors=False),
        "/models": _get("native", "Served models and their versions", errors=False),
        "/metrics": {
            "get": {
                "tags": ["native"],
                "summary": "Prometheus metrics",
                "responses": {"200": {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}}},
            }
        },
    }
    # What decoding accepts before a model's own schema: a non-empty record, list of rows or records, or text.
    native_body = {
        "oneOf": [
            {"type": "object", "minProperties": 1},
            {"type": "array", "minItems": 1},
            {"type": "string", "minLength": 1},
        ]
    }
    for suffix, operation in (
        ("/metadata", _get("native", "Model metadata")),
        ("/labels", _get("native", "Class labels")),
        ("/health", _get("native", "Model health")),
        ("/predict/test", _get("native", "Predict the bundle's sample input")),
        ("/predict", _post("native", "Predict: a record, records, a row or rows", native_body, {"type": "object"})),
    ):
        _per_model(paths, "/models/{name}", suffix, operation)

    paths["/v2/health/live"] = _get("v2", "Server live", errors=False)
    paths["/v2/health/ready"] = _get("v2", "Server ready", errors=False)
    paths["/v2"] = _get("v2", "Server metadata", _ref("ServerMetadata"), errors=False)
    _per_model(paths, "/v2/models/{name}", "", _get("v2", "Model metadata", _ref("ModelMetadata")))
    _per_model(paths, "/v2/models/{name}", "/ready", _get("v2", "Model ready"))
    infer = _post("v2", "Inference", _ref("InferenceRequest"), _ref("InferenceResponse"))
    infer["post"]["description"] = (
        "JSON, or the binary tensor data extension: an `Inference-Header-Content-Length` header gives the "
        "length of the JSON header, raw tensors follow it."
    )
    _per_model(paths, "/v2/models/{name}", "/infer", infer)

    paths["/v1/models"] = _get("kserve", "Served models", errors=False)
    paths["/v1/models/{name}"] = {"parameters": _path_params("name"), **_get("kserve", "Model status")}
    paths["/v1/models/{name}:predict"] = {
        "parameters": _path_params("name"),
        **_post("kserve", "Predict", _ref("KServeRequest"), _ref("KServeResponse")),
    }

    for version in ("v1.0", "v0.1"):
        operation = _post("seldon", "Predict (SeldonMessage)", _ref("SeldonMessage"), _ref("SeldonMessage"))
        if models is None or len(models) == 1:  # it names no model: usable only when one is served
            paths[f"/api/{version}/predictions"] = operation
        paths[f"/seldon/{{name}}/api/{version}/predictions"] = {"parameters": _path_params("name"), **operation}
        paths[f"/seldon/{{namespace}}/{{name}}/api/{version}/predictions"] = {
            "parameters": _path_params("namespace", "name"),
            **operation,
        }
    document = {
        "openapi": "3.0.3",
        "info": {
            "title": "Ferry",
            "version": ferry.__version__,
            "description": "Native JSON API, Open Inference Protocol v2, KServe v1 and Seldon, over one service layer.",
        },
        "tags": [
            {"name": "native", "description": "Ferry's own JSON API"},
            {"name": "v2", "description": "Open Inference Protocol v2 (REST)"},
            {"name": "kserve", "description": "KServe v1"},
            {"name": "seldon", "description": "Seldon protocol"},
        ],
        "paths": paths,
        "components": {"schemas": _SCHEMAS},
    }
    _served(document, models or [], versions or [])
    return document


_TENSOR_DATA: dict[str, Any] = {
    "type": "array",
    "items": {
        "anyOf": [
            {"$ref": "#/components/schemas/TensorData"},
            {"type": "number"},
            {"type": "string"},
            {"type": "boolean"},
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
        "required": ["error"],
        "properties": {"error": {"type": "string"}, "code": {"type": "string"}, "field": {"type": "string"}},
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
    "InferenceRequest": {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "parameters": {"type": "object"},
            "inputs": {
                "type": "array",
                "minItems": 1,
                "items": _TENSOR,
            },
            "outputs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}},
                },
            },
        },
    },
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
    "KServeRequest": {
        "type": "object",
        "required": ["instances"],
        "properties": {
            "instances": {
                "type": "array",
                "minItems": 1,
                "items": {"anyOf": [{"type": "array"}, {"type": "object"}, {"type": "string"}]},
            }
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
