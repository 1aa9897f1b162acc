"""ONNX classifiers as skl2onnx writes them keep their contract: labels (of the classes' own type), probabilities
(a tensor, or ZipMap's maps), the graph's own output names on v2, metadata datatypes equal to the answer's, and
``--labels``. Files written by skl2onnx (and one plain probability tensor by onnx.helper), built and served through
the CLI, answers compared with scikit-learn's predict and onnxruntime's own outputs on the same rows.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from tests.conftest import ServerProcess

skl2onnx = pytest.importorskip("skl2onnx")
ort = pytest.importorskip("onnxruntime")

from sklearn.datasets import load_iris  # noqa: E402
from sklearn.ensemble import RandomForestClassifier  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402

NAMES = ["setosa", "versicolor", "virginica"]


def _ferry(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ferry", *args], capture_output=True, text=True, cwd=cwd)


def _session_outputs(path: Path, rows: np.ndarray) -> dict[str, Any]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: rows.astype(np.float32)}
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feed), strict=True))


def _softmax_graph(weights: np.ndarray, path: Path) -> Path:
    """A plain probability tensor, as a hand-written or converted network answers: x -> MatMul -> Softmax -> probs."""
    from onnx import TensorProto, helper, numpy_helper, save

    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
        ],
        "softmax",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", weights.shape[0]])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", weights.shape[1]])],
        [numpy_helper.from_array(weights.astype(np.float32), "w")],
    )
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


@pytest.fixture(scope="module")
def classifiers(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """name -> (file, fitted model or None, the --labels given or None)."""
    folder = tmp_path_factory.mktemp("onnx")
    x, y = load_iris(return_X_y=True)
    sample = x[:1].astype(np.float32)
    logistic = LogisticRegression(max_iter=500).fit(x, y)
    forest = RandomForestClassifier(n_estimators=8, random_state=0).fit(x, np.asarray(NAMES)[y])
    files = {
        "lr-zipmap": (logistic, None),  # skl2onnx's default: output_label, output_probability (ZipMap)
        "lr-tensor": (logistic, {id(logistic): {"zipmap": False}}),  # label, probabilities
        "rf-strings": (forest, None),
        "lr-named": (logistic, {id(logistic): {"zipmap": False}}),  # built with --labels
    }
    models: dict[str, Any] = {}
    for name, (model, options) in files.items():
        path = folder / f"{name}.onnx"
        path.write_bytes(skl2onnx.to_onnx(model, sample, options=options).SerializeToString())
        models[name] = (path, model, NAMES if name == "lr-named" else None)
    weights = np.random.default_rng(3).normal(size=(4, 3))
    models["softmax"] = (_softmax_graph(weights, folder / "softmax.onnx"), None, ["low", "mid", "high"])
    for name, (path, _, labels) in models.items():
        extra = ["--labels", ",".join(labels)] if labels else []
        result = _ferry("build", path.name, "--name", name, "--repo", "models", *extra, cwd=folder)
        assert result.returncode == 0, result.stderr
    return folder, models


@pytest.fixture(scope="module")
def server(classifiers: tuple[Path, dict[str, Any]]) -> Iterator[ServerProcess]:
    folder, _ = classifiers
    process = ServerProcess([str(folder / "models")], env={"FERRY_TRUST_CODE": "0"})
    yield process
    process.stop()


def _rows() -> np.ndarray:
    x, _ = load_iris(return_X_y=True)
    return x[::6].astype(np.float32)  # 25 rows of every class


def _expected(name: str, classifiers: tuple[Path, dict[str, Any]], rows: np.ndarray) -> tuple[list[Any], np.ndarray]:
    """What the libraries answer: scikit-learn's predict (named by --labels), onnxruntime's own probabilities."""
    _, models = classifiers
    path, model, labels = models[name]
    outputs = _session_outputs(path, rows)
    probability = next(v for k, v in outputs.items() if "prob" in k)
    if isinstance(probability, list):  # ZipMap: one map per row
        classes = list(model.classes_)
        probability = np.asarray([[row[c] for c in classes] for row in probability], dtype=np.float32)
    if model is None:
        return [labels[i] for i in np.argmax(probability, axis=1)], probability
    predicted = model.predict(rows).tolist()
    return ([labels[i] for i in predicted] if labels else predicted), probability


@pytest.mark.parametrize("name", ["lr-zipmap", "lr-tensor", "rf-strings", "lr-named", "softmax"])
def test_native_answers_labels_and_probabilities_as_the_libraries_do(
    name: str, classifiers: tuple[Path, dict[str, Any]], server: ServerProcess
) -> None:
    rows = _rows()
    labels, probability = _expected(name, classifiers, rows)
    native = httpx.post(f"{server.url}/models/{name}/predict", json=rows.tolist(), timeout=30)
    assert native.status_code == 200, native.text
    body = native.json()
    assert body["predictions"] == labels
    assert [type(v) for v in body["predictions"]] == [type(v) for v in labels]  # 0/1/2 as integers, names as text
    _, model, given = classifiers[1][name]
    classes = given or [str(c) for c in model.classes_]
    assert body["probabilities"] == [dict(zip(classes, row, strict=True)) for row in probability.tolist()]
    if model is not None:  # and onnxruntime's float32 probabilities are scikit-learn's, to float32 precision
        np.testing.assert_allclose(probability, model.predict_proba(rows), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("name", "label_name", "probability_name", "label_type"),
    [
        ("lr-zipmap", "output_label", "output_probability", "INT64"),
        ("lr-tensor", "label", "probabilities", "INT64"),
        ("rf-strings", "output_label", "output_probability", "BYTES"),
        ("lr-named", "label", "probabilities", "BYTES"),
        ("softmax", "label", "probs", "BYTES"),
    ],
)
def test_v2_outputs_keep_the_graphs_names_and_the_metadatas_datatypes(
    name: str,
    label_name: str,
    probability_name: str,
    label_type: str,
    classifiers: tuple[Path, dict[str, Any]],
    server: ServerProcess,
) -> None:
    rows = _rows()
    labels, probability = _expected(name, classifiers, rows)
    metadata = httpx.get(f"{server.url}/v2/models/{name}", timeout=30).json()
    declared = {o["name"]: o["datatype"] for o in metadata["outputs"]}
    assert declared == {label_name: label_type, probability_name: "FP32"}
    tensor = {"name": metadata["inputs"][0]["name"], "shape": list(rows.shape), "datatype": "FP32"}
    body = {"inputs": [{**tensor, "data": rows.ravel().tolist()}]}
    answer = httpx.post(f"{server.url}/v2/models/{name}/infer", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    outputs = {o["name"]: o for o in answer.json()["outputs"]}
    assert {n: o["datatype"] for n, o in outputs.items()} == declared  # the answer is what the metadata says
    assert outputs[label_name]["data"] == labels
    assert outputs[probability_name]["shape"] == list(probability.shape)
    assert outputs[probability_name]["data"] == probability.ravel().tolist()
    # A Triton client asks for the graph's own output by its name, and gets only that one.
    only = {**body, "outputs": [{"name": probability_name}]}
    answer = httpx.post(f"{server.url}/v2/models/{name}/infer", json=only, timeout=30)
    assert answer.status_code == 200, answer.text
    assert [o["name"] for o in answer.json()["outputs"]] == [probability_name]


def test_labels_that_do_not_fit_the_graph_fail_the_build(classifiers: tuple[Path, dict[str, Any]]) -> None:
    folder, _ = classifiers
    result = _ferry("build", "softmax.onnx", "--name", "two", "--repo", "other", "--labels", "a,b", cwd=folder)
    assert result.returncode != 0
    assert "--labels names 2 classes, but the ONNX graph's output 'probs' is tensor(float) [-1, 3]" in result.stderr
    result = _ferry("build", "lr-tensor.onnx", "--name", "two", "--repo", "other", "--labels", "a,b", cwd=folder)
    assert result.returncode != 0 and "2 labels for a classifier of 3 classes" in result.stderr
