"""The server's OpenAPI document, its offline docs page, and a bounded schemathesis run with every check.

The document describes each served model's predict routes with the request bodies its codecs accept,
so schemathesis checks both ways: schema-valid bodies are accepted (ST202), schema-violating ones are
refused (ST201), every answer matches its declared status and schema, and other methods get a 405
with ``Allow`` (ST204).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import ServerProcess

MODELS = ["diabetes", "iris", "reviews", "score"]
EXPECTED_PATHS = [
    "/health",
    "/ready",
    "/models",
    "/metrics",
    "/models/{name}/metadata",
    "/v2",
    "/v2/health/live",
    "/v2/health/ready",
    "/v2/models/{name}",
    "/v2/models/{name}/versions/{version}",
    "/v2/models/{name}/ready",
    "/v2/models/{name}/versions/{version}/ready",
    "/v1/models",
    "/v1/models/{name}",
]
# Predict routes name the model: each has its own request schema.
EXPECTED_PATHS += [
    path
    for m in MODELS
    for path in (
        f"/models/{m}/predict",
        f"/models/{m}/versions/1/predict",
        f"/v2/models/{m}/infer",
        f"/v2/models/{m}/versions/1/infer",
        f"/v1/models/{m}:predict",
        f"/seldon/{m}/api/v1.0/predictions",
        f"/seldon/{m}/api/v0.1/predictions",
        f"/seldon/{{namespace}}/{m}/api/v1.0/predictions",
        f"/models/{m}/invocations",
    )
]


@pytest.fixture(scope="module")
def server(example_repo: Path) -> Iterator[ServerProcess]:
    process = ServerProcess([str(example_repo), "--grpc-port", "0"])
    yield process
    process.stop()


@pytest.fixture(scope="module")
def document(server: ServerProcess) -> dict[str, Any]:
    response = httpx.get(server.url + "/openapi.json")
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    return body


def _body(document: dict[str, Any], path: str) -> dict[str, Any]:
    schema: dict[str, Any] = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    return schema


def test_openapi_covers_native_and_every_protocol(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.0")
    assert [p for p in EXPECTED_PATHS if p not in document["paths"]] == []
    # Seldon's unnamed route answers only 400 with several models served, so the document leaves it out.
    assert "/api/v1.0/predictions" not in document["paths"]
    tags = {op["tags"][0] for item in document["paths"].values() for key, op in item.items() if key != "parameters"}
    assert tags == {"native", "v2", "kserve", "seldon", "mlflow"}
    # Path parameters list the models this server serves.
    metadata = document["paths"]["/v2/models/{name}"]
    assert metadata["parameters"][0]["schema"]["enum"] == MODELS


def test_request_schemas_are_each_models_own(document: dict[str, Any]) -> None:
    record = _body(document, "/models/iris/predict")["oneOf"][0]
    assert record["required"] == ["length", "width"] and record["additionalProperties"] is False
    assert record["properties"]["length"]["type"] == "number"
    # v2: the tensor the metadata names, in every datatype that converts without loss (FP16 only as binary).
    tensors = _body(document, "/v2/models/iris/infer")["properties"]["inputs"]["items"]["oneOf"]
    assert all(t["properties"]["name"]["enum"] == ["input", "input-0"] for t in tensors)
    datatypes = {t["properties"]["datatype"]["enum"][0] for t in tensors}
    assert {"FP64", "FP32", "INT64", "UINT8"} <= datatypes and "FP16" not in datatypes and "BYTES" not in datatypes
    text = _body(document, "/v2/models/reviews/infer")["properties"]["inputs"]["items"]
    assert text["properties"]["name"]["enum"] == ["text"] and text["properties"]["data"]["items"]["maxLength"] == 10000
    outputs = _body(document, "/v2/models/iris/infer")["properties"]["outputs"]["items"]["properties"]["name"]
    assert outputs["enum"] == ["predict"]  # MLServer's name for a scikit-learn model's output (issue 21)
    # Seldon: the columns are the features, each once, in any order.
    seldon = _body(document, "/seldon/iris/api/v1.0/predictions")["oneOf"]
    assert [form["required"] for form in seldon] == [["data"], ["jsonData"]]  # strData and binData: other kinds
    names = seldon[0]["properties"]["data"]["properties"]["names"]
    assert names["items"]["enum"] == ["length", "width"] and names["uniqueItems"] is True
    mlflow = {form["required"][0]: form["properties"] for form in _body(document, "/models/iris/invocations")["oneOf"]}
    assert list(mlflow) == ["dataframe_split", "dataframe_records", "instances", "inputs"]
    named = mlflow["dataframe_split"]["dataframe_split"]["oneOf"][1]["properties"]["columns"]
    assert named["items"]["enum"] == ["length", "width"] and named["uniqueItems"] is True
    kserve = _body(document, "/v1/models/score:predict")["oneOf"][0]["properties"]["instances"]["oneOf"]
    assert kserve[0]["items"]["required"] == ["X"] and kserve[1]["items"]["type"] == "array"


def test_every_status_is_declared_with_the_error_shape(document: dict[str, Any]) -> None:
    error = document["components"]["schemas"]["Error"]
    assert error["required"] == ["error", "code", "request_id"] and "field" in error["properties"]
    for path in ("/models/iris/predict", "/v2/models/iris/infer", "/v1/models/iris:predict"):
        responses = document["paths"][path]["post"]["responses"]
        assert set(responses) == {"200", "400", "401", "404", "408", "413", "415", "500", "503", "504"}
        assert responses["400"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    assert (
        "application/octet-stream" in document["paths"]["/v2/models/iris/infer"]["post"]["responses"]["200"]["content"]
    )


def test_every_parameterless_get_answers(server: ServerProcess, document: dict[str, Any]) -> None:
    for path, item in document["paths"].items():
        if "get" in item and "{" not in path:
            assert httpx.get(server.url + path).status_code == 200, path


def test_docs_page_works_offline(server: ServerProcess) -> None:
    page = httpx.get(server.url + "/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "http://" not in page.text and "https://" not in page.text  # no CDN
    assert 'url: "openapi.json"' in page.text
    for asset, media_type in (("swagger-ui-bundle.js", "text/javascript"), ("swagger-ui.css", "text/css")):
        assert f"docs/static/{asset}" in page.text
        response = httpx.get(f"{server.url}/docs/static/{asset}")
        assert response.status_code == 200 and response.headers["content-type"].startswith(media_type)
        assert len(response.content) > 100_000
    assert "SwaggerUIBundle" in httpx.get(server.url + "/docs/static/swagger-ui-bundle.js").text
    missing = httpx.get(server.url + "/docs/static/../../settings.py")
    assert missing.status_code == 404


def test_schemathesis_finds_no_failure_with_every_check(server: ServerProcess, tmp_path: Path) -> None:
    """Every schemathesis check, bounded in examples and time; a failure prints its curl reproduction."""
    executable = shutil.which("schemathesis") or shutil.which("st")
    assert executable, "schemathesis is part of the test extra"
    command = [
        executable,
        "run",
        server.url + "/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        "10",
        "--generation-deterministic",
        "--phases",
        "coverage,fuzzing",
        "--workers",
        "1",  # several workers share hypothesis' ast.parse across threads, which CPython 3.11 can crash in
        "--request-timeout",
        "10",
        # To bound the time: a pinned version's routes, Seldon's v0.1 alias and its namespaced path share
        # the default route's schema and codec, and score's v2 schema is iris's (one matrix tensor in every
        # datatype) under another name; v2's datatype variants make most of the run.
        "--exclude-path-regex",
        r"/versions/|\{namespace\}|/v0\.1/|^/v2/models/score/infer$",
    ]
    # The hook keeps rows of a free-width tensor to one length: the one rule JSON Schema cannot state.
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "schemathesis_hooks", "PYTHONPATH": str(Path(__file__).parent)}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert re.search(r"\d{3,} generated, \d{3,} passed", output), output[-2000:]
    for code in ("ST101", "ST201", "ST202", "ST204", "failed"):
        assert code not in output, output[-6000:]


def test_a_version_loaded_later_is_described(example_repo: Path, tmp_path: Path, serve: Any) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(example_repo / "iris", repo / "iris")
    server: ServerProcess = serve(str(repo), "--admin", "--admin-unauthenticated")
    assert "/v2/models/iris/versions/2/infer" not in httpx.get(server.url + "/openapi.json").json()["paths"]
    shutil.copytree(repo / "iris" / "1", repo / "iris" / "2")
    assert httpx.post(server.url + "/models/iris/load").status_code == 200
    paths = httpx.get(server.url + "/openapi.json").json()["paths"]
    assert "/v2/models/iris/versions/2/infer" in paths and "/models/iris/versions/2/predict" in paths
