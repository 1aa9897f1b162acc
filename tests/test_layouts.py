"""Folders users already have, served and built as they are: a KServe storage folder (a model file at its root), an
MLflow model folder without a signature, and an MLServer repository in which one model Ferry cannot run is FAILED
with its reason while the others serve. Files written by the libraries themselves (joblib, pickle, xgboost,
mlflow.sklearn.save_model, LightGBM), through ``ferry build`` processes and ``ferry serve``'s composition in
process (``tests/inprocess.py``; the layout converted by ``serve_layout`` as the command does), answers compared
with the library's own predict / predict_proba on the same rows, value types included.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression, Ridge
from tests.inprocess import InProcessServer, inprocess_fixture  # noqa: F401 (the fixture)

NO_TRUST = {"FERRY_TRUST_CODE": "0"}  # the conftest's servers trust code; these tests are about the flags


def _ferry(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ferry", *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def _iris() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_iris(return_X_y=True)
    return x, y


def _rows() -> np.ndarray:
    return _iris()[0][::5]


def _v2(rows: np.ndarray) -> dict[str, Any]:
    tensor = {"name": "input-0", "shape": list(rows.shape), "datatype": "FP64", "data": rows.ravel().tolist()}
    return {"inputs": [tensor]}


def _models(server: InProcessServer) -> dict[str, dict[str, Any]]:
    listing = server.client.get("/models", timeout=10).json()["models"]
    return {m["name"]: m["versions"][-1] for m in listing}


# -- KServe storage folders ------------------------------------------------------------------------------------
@pytest.mark.parametrize("file", ["model.joblib", "model.pkl"])
def test_a_kserve_folder_serves_with_the_flag_named_after_the_folder(
    file: str, tmp_path: Path, inprocess: Callable[..., InProcessServer]
) -> None:
    x, y = _iris()
    model = LogisticRegression(max_iter=500).fit(x, y)
    folder = tmp_path / "flowers"
    folder.mkdir()
    if file == "model.joblib":
        joblib.dump(model, folder / file)
    else:
        (folder / file).write_bytes(pickle.dumps(model))
    server = inprocess(folder, "--trust-pickle", env=NO_TRUST)
    rows = _rows()
    native = server.client.post("/models/flowers/predict", json=rows.tolist(), timeout=30).json()
    expected = model.predict(rows).tolist()
    assert native["predictions"] == expected and all(type(v) is int for v in native["predictions"])
    proba = model.predict_proba(rows)
    # Served compiled: a multinomial LogisticRegression's softmax is within 1e-9 relative (README, "compiled form").
    assert [list(p) for p in native["probabilities"]] == [["0", "1", "2"]] * len(rows)
    got = [list(p.values()) for p in native["probabilities"]]
    np.testing.assert_allclose(got, proba, rtol=1e-9, atol=0)
    v2 = server.client.post("/v2/models/flowers/infer", json=_v2(rows), timeout=30).json()
    outputs = {o["name"]: o for o in v2["outputs"]}
    assert outputs["predict"]["datatype"] == "INT64" and outputs["predict"]["data"] == expected
    assert outputs["predict_proba"]["datatype"] == "FP64" and outputs["predict_proba"]["shape"] == list(proba.shape)
    np.testing.assert_allclose(outputs["predict_proba"]["data"], proba.ravel(), rtol=1e-9, atol=0)
    # KServe v1, as KServe's sklearn server answers it
    v1 = server.client.post("/v1/models/flowers:predict", json={"instances": rows.tolist()}, timeout=30).json()
    assert v1 == {"predictions": expected}


def test_a_kserve_folder_without_the_flag_is_failed_with_its_reason(
    tmp_path: Path, inprocess: Callable[..., InProcessServer]
) -> None:
    x, y = _iris()
    folder = tmp_path / "flowers"
    folder.mkdir()
    joblib.dump(LogisticRegression(max_iter=500).fit(x, y), folder / "model.joblib")
    server = inprocess(folder, "--name", "iris", env=NO_TRUST, wait_ready=False)
    ready = server.client.get("/ready", timeout=10)
    assert ready.status_code == 503
    (entry,) = ready.json()["models"]
    assert entry["name"] == "iris" and entry["state"] == "FAILED"
    assert "model.joblib is a pickle" in entry["error"] and "--trust-pickle" in entry["error"]
    answer = server.client.post("/models/iris/predict", json=_rows().tolist(), timeout=10)
    assert answer.status_code == 503 and "FAILED" in answer.json()["error"]


def test_a_kserve_folder_builds_a_bundle_of_the_folders_name(tmp_path: Path) -> None:
    import xgboost

    x, y = _iris()
    folder = tmp_path / "boosted"
    folder.mkdir()
    model = xgboost.XGBClassifier(n_estimators=10, max_depth=2).fit(x, y)
    model.save_model(str(folder / "model.bst"))  # KServe's xgbserver file name; XGBoost writes UBJSON
    built = _ferry("build", str(folder), "--repo", str(tmp_path / "repo"))
    assert built.returncode == 0, built.stderr
    assert (tmp_path / "repo" / "boosted" / "1" / "ferry.yaml").is_file()
    joblib.dump(model, tmp_path / "model.joblib")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "model.bst").write_bytes((folder / "model.bst").read_bytes())
    (mixed / "model.joblib").write_bytes((tmp_path / "model.joblib").read_bytes())
    refused = _ferry("build", str(mixed), "--repo", str(tmp_path / "repo"))
    assert refused.returncode == 1
    assert "one model file at its root; it holds model.joblib, model.bst" in refused.stderr


# -- MLflow model folders --------------------------------------------------------------------------------------
def test_an_mlflow_model_without_a_signature_takes_any_column_names_in_order(
    tmp_path: Path, inprocess: Callable[..., InProcessServer]
) -> None:
    x, y = _iris()
    model = Ridge().fit(x, y.astype(float))
    with warnings.catch_warnings():  # mlflow warns about pickle formats, and about its own environment
        warnings.simplefilter("ignore")
        mlflow_sklearn = pytest.importorskip("mlflow.sklearn", reason="mlflow is a test extra")
        # No signature, no input example; requirements given, else mlflow infers them in a child process.
        mlflow_sklearn.save_model(model, str(tmp_path / "ridge"), pip_requirements=["scikit-learn"])
    assert "signature" not in (tmp_path / "ridge" / "MLmodel").read_text()
    assert "serialization_format: skops" in (tmp_path / "ridge" / "MLmodel").read_text()  # mlflow 3's default
    server = inprocess(tmp_path / "ridge", env=NO_TRUST)  # so no flag
    rows = _rows()
    expected = model.predict(rows).tolist()
    columns = ["sepal length", "sepal width", "petal length", "petal width"]  # names the model never saw
    split = {"dataframe_split": {"columns": columns, "data": rows.tolist()}}
    answer = server.client.post("/invocations", json=split, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"predictions": expected}
    records = {"dataframe_records": [dict(zip(columns, row, strict=True)) for row in rows.tolist()]}
    assert server.client.post("/invocations", json=records, timeout=30).json() == {"predictions": expected}
    inputs = {"inputs": {c: rows[:, i].tolist() for i, c in enumerate(columns)}}
    assert server.client.post("/invocations", json=inputs, timeout=30).json() == {"predictions": expected}
    # by position: as many columns as the model takes
    short = {"dataframe_split": {"columns": columns[:3], "data": rows[:, :3].tolist()}}
    refused = server.client.post("/invocations", json=short, timeout=30)
    assert refused.status_code == 400 and "expected 4 values per row, got 3" in refused.json()["error"]
    for name in ([], ["--name", "r"]):  # named after the folder, or --name
        built = _ferry("build", str(tmp_path / "ridge"), *name, "--repo", str(tmp_path / "repo"))
        assert built.returncode == 0, built.stderr
    assert sorted(p.name for p in (tmp_path / "repo").iterdir() if not p.name.startswith(".")) == ["r", "ridge"]


# -- MLServer repositories: one model that cannot run ----------------------------------------------------------
def write_mixed_repository(folder: Path) -> dict[str, Any]:
    """An MLServer repository: an XGBoost and a LightGBM model Ferry runs, a joblib pickle that needs the flag, an
    implementation Ferry does not know, and a settings file that is not JSON."""
    import lightgbm
    import xgboost

    x, y = _iris()
    models: dict[str, Any] = {}
    (folder / "boosted").mkdir(parents=True)
    models["boosted"] = xgboost.XGBClassifier(n_estimators=10, max_depth=2).fit(x, y)
    models["boosted"].save_model(str(folder / "boosted" / "model.json"))
    settings = {"name": "boosted", "implementation": "mlserver_xgboost.XGBoostModel", "parameters": {"version": "3"}}
    (folder / "boosted" / "model-settings.json").write_text(json.dumps(settings))
    (folder / "petals").mkdir()
    booster = lightgbm.train({"verbose": -1, "min_data_in_leaf": 1}, lightgbm.Dataset(x, x[:, 2] * 2.0), 10)
    booster.save_model(str(folder / "petals" / "model.bst"))
    models["petals"] = booster
    settings = {"name": "petals", "implementation": "mlserver_lightgbm.LightGBMModel"}
    (folder / "petals" / "model-settings.json").write_text(json.dumps(settings))
    (folder / "pickled").mkdir()
    joblib.dump(LogisticRegression(max_iter=500).fit(x, y), folder / "pickled" / "model.joblib")
    settings = {"name": "pickled", "implementation": "mlserver_sklearn.SKLearnModel"}
    (folder / "pickled" / "model-settings.json").write_text(json.dumps(settings))
    (folder / "chat").mkdir()
    settings = {"name": "chat", "implementation": "mlserver_huggingface.HuggingFaceRuntime"}
    (folder / "chat" / "model-settings.json").write_text(json.dumps(settings))
    (folder / "broken").mkdir()
    (folder / "broken" / "model-settings.json").write_text("{not json")
    return models


def test_an_mlserver_model_ferry_cannot_run_is_failed_while_the_others_serve(
    tmp_path: Path, inprocess: Callable[..., InProcessServer]
) -> None:
    models = write_mixed_repository(tmp_path / "mlserver")
    server = inprocess(tmp_path / "mlserver", env=NO_TRUST, wait_ready=False)
    ready = server.client.get("/ready", timeout=10)
    assert ready.status_code == 503  # not every model serves
    states = {m["name"]: m for m in ready.json()["models"]}
    assert {n: m["state"] for n, m in states.items()} == {
        "boosted": "READY",
        "petals": "READY",
        "pickled": "FAILED",
        "chat": "FAILED",
        "broken": "FAILED",
    }
    assert "model.joblib is a pickle" in states["pickled"]["error"] and "--trust-pickle" in states["pickled"]["error"]
    assert "implementation 'mlserver_huggingface.HuggingFaceRuntime' is not one Ferry runs" in states["chat"]["error"]
    assert "broken/model-settings.json: not valid JSON" in states["broken"]["error"]
    assert "/tmp" not in json.dumps(ready.json())  # reasons name the files, never where the repository lives
    listed = _models(server)
    assert listed["chat"]["state"] == "FAILED" and listed["chat"]["error"] == states["chat"]["error"]
    assert listed["boosted"]["version"] == "3"
    rows = _rows()
    v2 = server.client.post("/v2/models/boosted/versions/3/infer", json=_v2(rows), timeout=30).json()
    outputs = {o["name"]: o for o in v2["outputs"]}
    assert outputs["predict"]["data"] == models["boosted"].predict(rows).tolist()  # MLServer's XGBoost names
    assert outputs["predict_proba"]["data"] == models["boosted"].predict_proba(rows).ravel().tolist()
    petals = server.client.post("/models/petals/predict", json=rows.tolist(), timeout=30).json()
    assert petals["predictions"] == pytest.approx(models["petals"].predict(rows).tolist(), rel=1e-12)
    # /invocations names no model: with several served, the answer says which paths do
    unnamed = server.client.post("/invocations", json={"instances": rows.tolist()}, timeout=10)
    assert unnamed.status_code == 400
    assert "POST /models/boosted/invocations, /models/broken/invocations" in unnamed.json()["error"]
    named = server.client.post("/models/petals/invocations", json={"instances": rows.tolist()}, timeout=10)
    assert named.json()["predictions"] == petals["predictions"]


def test_with_the_flag_the_pickle_serves_too_and_ferry_build_reports_the_rest(
    tmp_path: Path, inprocess: Callable[..., InProcessServer]
) -> None:
    write_mixed_repository(tmp_path / "mlserver")
    server = inprocess(tmp_path / "mlserver", "--trust-pickle", env=NO_TRUST, wait_ready=False)
    assert {n: m["state"] for n, m in _models(server).items() if m["state"] == "READY"}.keys() == {
        "boosted",
        "petals",
        "pickled",
    }
    built = _ferry("build", str(tmp_path / "mlserver"), "--repo", str(tmp_path / "repo"))
    assert built.returncode == 1
    assert "3 model(s) not built" in built.stderr and "pickled: " in built.stderr and "--trusted" in built.stderr
    assert sorted(p.name for p in (tmp_path / "repo").iterdir() if not p.name.startswith(".")) == ["boosted", "petals"]


def test_the_readme_kserve_and_onnx_block(tmp_path: Path, inprocess: Callable[..., InProcessServer]) -> None:
    """The README's block, as printed: a KServe folder and an ONNX classifier with --labels, then served."""
    import re

    skl2onnx = pytest.importorskip("skl2onnx")
    from tests.manual import manual_text

    readme = manual_text()
    found = re.search(r"test_the_readme_kserve_and_onnx_block -->\n```bash\n(.*?)```", readme, re.S)
    assert found is not None
    x, y = _iris()
    classifier = LogisticRegression(max_iter=500).fit(x, y)
    (tmp_path / "flowers").mkdir()
    joblib.dump(classifier, tmp_path / "flowers" / "model.joblib")
    (tmp_path / "iris.onnx").write_bytes(skl2onnx.to_onnx(classifier, x[:1].astype(np.float32)).SerializeToString())
    command = found.group(1).replace("ferry ", f"{sys.executable} -m ferry ")
    done = subprocess.run(["bash", "-e", "-c", command], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    server = inprocess(tmp_path / "models", env=NO_TRUST | {"FERRY_TRUST_PICKLE": "1"})
    rows = _rows()
    flowers = server.client.post("/models/flowers/predict", json=rows.tolist(), timeout=30).json()
    assert flowers["predictions"] == classifier.predict(rows).tolist()
    onnx = server.client.post("/models/iris-onnx/predict", json=rows.tolist(), timeout=30).json()
    assert onnx["predictions"] == [["setosa", "versicolor", "virginica"][c] for c in classifier.predict(rows)]
    np.testing.assert_allclose([list(p.values()) for p in onnx["probabilities"]], classifier.predict_proba(rows), 1e-4)
