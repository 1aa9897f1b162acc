"""Explanations on Open Inference v2 (issue 23): ``"parameters": {"explain": true}`` on an infer request, REST and
gRPC, against a real server. The contributions equal LightGBM's own ``pred_contrib``; a model without an exact
explanation answers the 501 (gRPC UNIMPLEMENTED) naming those that have one; the REST metadata says which can.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import lightgbm
import numpy as np
import pytest

import ferry
from conftest import ServerProcess, free_port
from ferry.examples import build_examples
from ferry.grpc import inference_pb2 as pb
from ferry.grpc import inference_pb2_grpc as pb_grpc

FEATURES = ["a", "b", "c"]
LABELS = ["low", "mid", "high"]
_rng = np.random.default_rng(7)
_X = _rng.normal(size=(300, 3))
_Y = np.digitize(_X[:, 0] + _X[:, 1], [-0.5, 0.5])
ROWS = np.asarray([[0.3, -1.2, 2.0], [1.0, 1.0, 1.0], [-0.7, 0.1, -2.5]])


@pytest.fixture(scope="module")
def boosters() -> dict[str, Any]:
    return {
        "grades": lightgbm.LGBMClassifier(n_estimators=15, num_leaves=7, verbose=-1).fit(_X, _Y),
        "level": lightgbm.LGBMRegressor(n_estimators=10, num_leaves=5, verbose=-1).fit(_X, _X[:, 0] - _X[:, 2]),
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, boosters: dict[str, Any]) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("v2-explain")
    build_examples(repo, ["score"])  # a Python class: no exact explanation
    schema = {"kind": "features", "features": [{"name": name} for name in FEATURES]}
    ferry.build(boosters["grades"], "grades", repo, input_schema=schema, labels=LABELS)
    ferry.build(boosters["level"], "level", repo, input_schema=schema)
    port = free_port()
    process = ServerProcess([str(repo), "--grpc-port", str(port)])
    process.grpc_port = port
    yield process
    process.stop()


def _tensors(model: str) -> list[tuple[str, np.ndarray]]:
    """The rows as the model takes them: one tensor per feature, or the Python class's one 2-D tensor."""
    if model == "score":
        return [("X", ROWS)]
    return [(name, ROWS[:, j]) for j, name in enumerate(FEATURES)]


def _rest(server: ServerProcess, model: str, parameters: dict[str, Any]) -> tuple[int, Any]:
    inputs = [
        {"name": name, "datatype": "FP64", "shape": list(values.shape), "data": values.reshape(-1).tolist()}
        for name, values in _tensors(model)
    ]
    response = httpx.post(
        f"{server.url}/v2/models/{model}/infer", json={"inputs": inputs, "parameters": parameters}, timeout=20
    )
    if response.status_code != 200:
        return response.status_code, response.json()
    body = response.json()
    outputs = {
        o["name"]: np.asarray(o["data"], dtype=object if o["datatype"] == "BYTES" else None).reshape(o["shape"])
        for o in body["outputs"]
    }
    return 200, (outputs, body.get("parameters", {}))


def _grpc(server: ServerProcess, model: str, parameters: dict[str, Any]) -> tuple[int, Any]:
    request = pb.ModelInferRequest(model_name=model)
    for name, values in _tensors(model):
        tensor = request.inputs.add(name=name, datatype="FP64", shape=list(values.shape))
        tensor.contents.fp64_contents.extend(values.reshape(-1).tolist())
    for key, value in parameters.items():
        request.parameters[key].bool_param = value
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        try:
            response = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=20)
        except grpc.RpcError as exc:
            error: Any = exc
            code = {grpc.StatusCode.UNIMPLEMENTED: 501, grpc.StatusCode.INVALID_ARGUMENT: 400}[error.code()]
            return code, {"error": error.details()}
    outputs = {}
    for tensor in response.outputs:
        if tensor.datatype == "BYTES":
            values: Any = np.asarray([v.decode() for v in tensor.contents.bytes_contents], dtype=object)
        else:
            values = np.asarray(tensor.contents.fp64_contents or tensor.contents.int64_contents)
        outputs[tensor.name] = values.reshape(list(tensor.shape))
    return 200, (outputs, {k: v.string_param for k, v in response.parameters.items()})


TRANSPORTS = {"rest": _rest, "grpc": _grpc}


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_explain_adds_multiclass_contributions_equal_to_lightgbm(
    server: ServerProcess, boosters: dict[str, Any], transport: str
) -> None:
    status, (outputs, parameters) = TRANSPORTS[transport](server, "grades", {"explain": True})
    assert status == 200
    _, (plain, _) = TRANSPORTS[transport](server, "grades", {})
    assert "contributions" not in plain
    for name in plain:  # the prediction's own outputs, as without explain
        assert outputs[name].tolist() == plain[name].tolist(), name
    reference = boosters["grades"].booster_.predict(ROWS, pred_contrib=True).reshape(len(ROWS), 3, 4)
    assert outputs["contributions"].shape == (len(ROWS), 3, 3)
    np.testing.assert_allclose(outputs["contributions"], reference[:, :, :3], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(outputs["expected_value"], reference[0, :, 3], rtol=1e-9)
    assert outputs["contribution_features"].tolist() == FEATURES
    raw = boosters["grades"].booster_.predict(ROWS, raw_score=True)
    sums = outputs["contributions"].sum(axis=2) + outputs["expected_value"]
    np.testing.assert_allclose(sums, raw, rtol=1e-9, atol=1e-12)
    assert parameters == {"explain_method": "tree_shap", "explain_link": "softmax"}


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_explain_of_one_score_is_rows_by_features(
    server: ServerProcess, boosters: dict[str, Any], transport: str
) -> None:
    status, (outputs, parameters) = TRANSPORTS[transport](server, "level", {"explain": True})
    assert status == 200
    reference = boosters["level"].booster_.predict(ROWS, pred_contrib=True)
    assert outputs["contributions"].shape == (len(ROWS), 3)
    np.testing.assert_allclose(outputs["contributions"], reference[:, :3], rtol=1e-9, atol=1e-12)
    assert outputs["expected_value"].shape == (1,)
    np.testing.assert_allclose(outputs["expected_value"], reference[0, 3:], rtol=1e-9)
    np.testing.assert_allclose(outputs["predict"], boosters["level"].predict(ROWS), rtol=1e-12)
    assert parameters == {"explain_method": "tree_shap", "explain_link": "identity"}


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_model_without_an_exact_explanation_is_501_naming_those_that_have_one(
    server: ServerProcess, transport: str
) -> None:
    status, body = TRANSPORTS[transport](server, "score", {"explain": True})
    assert status == 501
    assert body["error"].startswith("model 'score' cannot be explained: ")
    if transport == "rest":
        assert body["explainable_models"] == ["grades", "level"]


def test_explain_must_be_a_bool_and_metadata_says_who_explains(server: ServerProcess) -> None:
    status, body = _rest(server, "grades", {"explain": "yes"})
    assert status == 400 and body["error"] == "Expected `bool`, got `str` - at `$.parameters.explain`", body
    grades = httpx.get(server.url + "/v2/models/grades").json()
    assert grades["explanation"] == {"method": "tree_shap", "link": "softmax"}
    score = httpx.get(server.url + "/v2/models/score").json()
    assert set(score["explanation"]) == {"unavailable"}
