"""KServe's and MLServer's own endpoint tests, ported to run against a live ``ferry serve``.

Sources: kserve/kserve ``python/kserve/test/test_server.py`` (``TestV1Endpoints``, ``TestV2Endpoints``) and
SeldonIO/MLServer ``tests/rest/test_endpoints.py``. Neither package is installed (both pull in heavy
stacks: ray, fastapi, pandas, pydantic models), so the cases are ported, not imported. Their dummy
model echoes its input; here that is a Python-class bundle that echoes its batch (``tests/models/sleepy.py``
with no sleep), served by a real process.

Adaptations, case by case:

- Model names: their ``TestModel`` / ``sum-model`` is ``echo`` (version ``1``).
- KServe ``test_unknown_model_v1``, ``test_unknown_path_v1``, MLServer ``test_infer_error``: the status
  is theirs (404); the body is Ferry's one error shape (``error``, ``code``, ``request_id``), not their text.
- KServe ``test_predict_v1`` / ``test_infer_v2``: the echo model takes float64, so ``[1,2]`` comes back as
  ``[1.0,2.0]``; compared as numbers. The v2 input is named ``x`` as the model declares (Ferry checks names
  on single-input models; KServe's dummy takes ``input-0``).
- KServe ``test_explain_v1``: Ferry has no explainers, so ``:explain`` answers 501 (``not_implemented``),
  as KServe answers a model without ``explain``; the 200 echo of their dummy explainer has no counterpart.
- KServe ``test_infer_parameters_v2``: Ferry accepts request and input ``parameters`` and echoes ``id``,
  but does not copy parameters into the response (the spec does not ask it to).
- KServe FP16 cases: FP16 in JSON is a 400 (theirs too); FP16 as binary data is accepted by a float model.
  Their FP16 *output* cases need a model that answers FP16; the echo model answers FP64, so the binary
  output cases check the binary layout with FP64 (``binary_data_output`` and a per-output ``binary_data``).
- MLServer ``test_metadata``: ``name`` is ``ferry`` and ``extensions`` lists ``binary_tensor_data``.
- MLServer ``test_model_repository_index``: ``POST /v2/repository/index`` lists every version with its state.
- Not ported: streaming (``generate``, ``infer_stream``), CloudEvents headers, Ray, Avro, MLServer's
  ``/v2/repository/models/{m}/load|unload`` (Ferry's admin API is ``/models/{name}/load|unload``), and
  MLServer's 422 for an invalid datatype (Ferry answers 400, as KServe does).
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

import ferry
from conftest import ServerProcess

SLEEPY = Path(__file__).parent / "models" / "sleepy.py"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    repo = tmp_path_factory.mktemp("peers")
    spec = importlib.util.spec_from_file_location("sleepy", SLEEPY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    schema = {"kind": "tensor", "tensors": [{"name": "x", "shape": [-1, -1]}]}
    ferry.build(module.Sleepy, "echo", repo, version="1", input_schema=schema, sample_input=[1.0])
    server = ServerProcess([str(repo), "--grpc-port", "0"], env={"FERRY_TEST_SLEEP": "0"})
    with httpx.Client(base_url=server.url, timeout=10.0) as http:
        yield http
    server.stop()


# -- KServe: TestV1Endpoints -------------------------------------------------------------------------------
def test_liveness_v1(client: httpx.Client) -> None:
    response = client.get("/")
    assert response.status_code == 200 and response.json() == {"status": "alive"}


def test_model_v1(client: httpx.Client) -> None:
    assert client.get("/v1/models/echo").status_code == 200


def test_unknown_model_v1(client: httpx.Client) -> None:
    response = client.get("/v1/models/InvalidModel")
    assert response.status_code == 404 and response.json()["code"] == "model_not_found"


def test_list_models_v1(client: httpx.Client) -> None:
    assert client.get("/v1/models").json() == {"models": ["echo"]}


def test_predict_v1(client: httpx.Client) -> None:
    response = client.post("/v1/models/echo:predict", content=b'{"instances":[[1,2]]}')
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    assert response.json() == {"predictions": [[1, 2]]}


def test_explain_v1(client: httpx.Client) -> None:
    response = client.post("/v1/models/echo:explain", content=b'{"instances":[[1,2]]}')
    assert response.status_code == 501 and response.json()["code"] == "not_implemented"


def test_unknown_path_v1(client: httpx.Client) -> None:
    response = client.get("/unknown_path")
    assert response.status_code == 404 and response.json()["error"] == "no route GET /unknown_path"


def test_metrics_v1(client: httpx.Client) -> None:
    response = client.get("/metrics")
    assert response.status_code == 200 and b"ferry_requests_total" in response.content


# -- KServe: TestV2Endpoints -------------------------------------------------------------------------------
def test_list_models_v2(client: httpx.Client) -> None:
    assert client.get("/v2/models").json() == {"models": ["echo"]}


def test_infer_v2(client: httpx.Client) -> None:
    body = b'{"inputs": [{"name": "x","shape": [1, 2],"datatype": "INT32","data": [[1,2]]}]}'
    response = client.post("/v2/models/echo/infer", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    assert response.json()["outputs"][0]["data"] == [1, 2]


def test_infer_parameters_v2(client: httpx.Client) -> None:
    parameters = {"test-str": "dummy", "test-bool": True, "test-int": 100, "test-float": 1.3}
    body = {
        "id": "123",
        "parameters": parameters,
        "inputs": [{"name": "x", "datatype": "INT32", "shape": [1, 2], "data": [1, 2], "parameters": parameters}],
    }
    response = client.post("/v2/models/echo/infer", json=body)
    assert response.status_code == 200
    result = response.json()
    assert result["id"] == "123" and result["model_name"] == "echo"
    assert result["outputs"][0]["shape"] == [1, 2] and result["outputs"][0]["data"] == [1, 2]


def test_fp16_input_as_binary_data(client: httpx.Client) -> None:
    raw = np.array([[6.8, 2.8, 4.8, 1.4], [6.0, 3.4, 4.5, 1.6]], dtype=np.float16).tobytes()
    header = json.dumps(
        {
            "id": "123",
            "inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP16", "parameters": {"binary_data_size": 16}}],
        }
    ).encode()
    headers = {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"}
    response = client.post("/v2/models/echo/infer", content=header + raw, headers=headers)
    assert response.status_code == 200
    output = response.json()["outputs"][0]
    assert output["shape"] == [2, 4] and output["data"][:2] == [6.80078125, 2.80078125]


def test_fp16_input_not_binary_data(client: httpx.Client) -> None:
    data = np.array([[6.8, 2.8, 4.8, 1.4], [6.0, 3.4, 4.5, 1.6]], dtype=np.float16).tolist()
    body = {"id": "123", "inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP16", "data": data}]}
    assert client.post("/v2/models/echo/infer", json=body).status_code == 400


def _fp32_request(**extra: object) -> dict[str, object]:
    data = np.array([[6.8, 2.8, 4.8, 1.4], [6.0, 3.4, 4.5, 1.6]], dtype=np.float32).tolist()
    return {"id": "123", "inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": data}], **extra}


def test_requested_output(client: httpx.Client) -> None:
    body = _fp32_request(outputs=[{"name": "prediction", "parameters": {"binary_data": False}}])
    response = client.post("/v2/models/echo/infer", json=body)
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    assert [o["name"] for o in response.json()["outputs"]] == ["prediction"]


def test_all_output_as_binary_data(client: httpx.Client) -> None:
    response = client.post("/v2/models/echo/infer", json=_fp32_request(parameters={"binary_data_output": True}))
    assert response.status_code == 200
    length = int(response.headers["inference-header-content-length"])
    header = json.loads(response.content[:length])
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 64}
    values = np.frombuffer(response.content[length:], dtype="<f8")
    np.testing.assert_allclose(values[:2], np.float32([6.8, 2.8]))


def test_binary_data_parameter_precedence(client: httpx.Client) -> None:
    body = _fp32_request(
        parameters={"binary_data_output": True}, outputs=[{"name": "prediction", "parameters": {"binary_data": False}}]
    )
    response = client.post("/v2/models/echo/infer", json=body)
    assert response.status_code == 200 and "inference-header-content-length" not in response.headers
    assert len(response.json()["outputs"][0]["data"]) == 8


# -- MLServer: tests/rest/test_endpoints.py ----------------------------------------------------------------
def test_live(client: httpx.Client) -> None:
    assert client.get("/v2/health/live").status_code == 200


def test_ready(client: httpx.Client) -> None:
    assert client.get("/v2/health/ready").status_code == 200


def test_model_ready(client: httpx.Client) -> None:
    assert client.get("/v2/models/echo/versions/1/ready").status_code == 200


def test_metadata(client: httpx.Client) -> None:
    metadata = client.get("/v2").json()
    assert metadata["name"] == "ferry" and metadata["version"] == ferry.__version__
    assert metadata["extensions"] == ["binary_tensor_data"]


def test_model_metadata(client: httpx.Client) -> None:
    metadata = client.get("/v2/models/echo").json()
    assert metadata["name"] == "echo" and metadata["versions"] == ["1"] and metadata["platform"] == "ferry_python"
    assert metadata["inputs"] == [{"name": "x", "datatype": "FP64", "shape": [-1, -1]}]


@pytest.mark.parametrize("path", ["/v2/models/echo/infer", "/v2/models/echo/versions/1/infer"])
def test_infer(client: httpx.Client, path: str) -> None:
    body = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "INT32", "data": [1, 2, 3]}]}
    response = client.post(path, json=body)
    assert response.status_code == 200
    assert len(response.json()["outputs"]) == 1 and response.json()["outputs"][0]["data"] == [1, 2, 3]


def test_infer_error(client: httpx.Client) -> None:
    body = {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "INT32", "data": [1]}]}
    response = client.post("/v2/models/my-model/versions/v0/infer", json=body)
    assert response.status_code == 404
    assert response.json()["error"] == "model 'my-model' not found; served models: echo"


def test_model_repository_index(client: httpx.Client) -> None:
    response = client.post("/v2/repository/index", json={})
    assert response.status_code == 200
    assert response.json() == [{"name": "echo", "version": "1", "state": "READY", "reason": ""}]
