"""XGBoost and CatBoost files as their libraries save them: compiled bit for bit, or served through the library.

The evaluator's property tests compare with ``Booster.predict`` (margin and transformed, float32) and CatBoost's
``RawFormulaVal``; the CLI tests build the files the libraries wrote and serve them, and compare every answer,
on native and v2 REST, with the library's own predict / predict_proba on the same rows, value types included.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.conftest import ServerProcess
from tests.inprocess import InProcessServer, inprocess_fixture  # noqa: F401 (the fixture)

catboost = pytest.importorskip("catboost")
xgboost = pytest.importorskip("xgboost")

from ferry.bundle.artifacts import sniff  # noqa: E402
from ferry.runtimes.float32links import FLOAT32_LINKS  # noqa: E402
from ferry.runtimes.trees import from_catboost, from_xgboost  # noqa: E402

WIDTH = 4
OBJECTIVES = ["reg:squarederror", "binary:logistic", "multi:softprob", "count:poisson", "reg:gamma", "binary:logitraw"]


def _target(objective: str, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    signal = np.nan_to_num(x[:, 0]) + 0.5 * np.nan_to_num(x[:, 1]) + rng.normal(scale=0.5, size=x.shape[0])
    if objective.startswith("binary:"):
        return (signal > 0).astype(int)
    if objective.startswith("multi:"):
        return np.digitize(signal, [-0.7, 0.7])
    if objective in ("count:poisson", "reg:gamma"):
        return np.abs(signal) + 0.1
    return signal


def _rows(rng: np.random.Generator, count: int, nan: float) -> np.ndarray:
    x = rng.normal(scale=2.0, size=(count, WIDTH))
    x[rng.random(x.shape) < nan] = np.nan
    x[rng.random(x.shape) < 0.05] = 0.0
    return x


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    objective=st.sampled_from(OBJECTIVES),
    depth=st.integers(1, 7),
    trees=st.integers(1, 40),
    nan=st.sampled_from([0.0, 0.1]),
    seed=st.integers(0, 2**16),
)
def test_xgboost_margins_and_answers_equal_the_boosters_bit_for_bit(
    objective: str, depth: int, trees: int, nan: float, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    x = _rows(rng, 300, nan)
    params = {"objective": objective, "max_depth": depth, "eta": 0.3, "nthread": 1}
    if objective.startswith("multi:"):
        params["num_class"] = 3
    booster = xgboost.train(params, xgboost.DMatrix(x, _target(objective, x, rng)), trees)
    ensemble, head = from_xgboost(json.loads(booster.save_raw("json")))
    probe = _rows(rng, 400, nan)
    # Rows on every split threshold and the float32 either side of it, where x < split decides.
    thresholds = ensemble.threshold[np.isfinite(ensemble.threshold)].astype(np.float32)
    if thresholds.size:
        picks = rng.choice(thresholds, size=probe.shape)
        probe[:200] = np.where(rng.random(probe.shape) < 0.5, np.nextafter(picks, np.float32(np.inf)), picks)[:200]
    margin = booster.predict(xgboost.DMatrix(probe), output_margin=True).reshape(probe.shape[0], -1)
    mine = ensemble.predict_raw(probe)
    assert np.array_equal(mine, margin.astype(np.float64))
    answer = booster.predict(xgboost.DMatrix(probe))
    link = head["transform"]
    transformed = mine if link == "identity" else FLOAT32_LINKS[link](mine)
    assert np.array_equal(np.asarray(transformed, dtype=np.float32).reshape(answer.shape), answer)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    loss=st.sampled_from(["RMSE", "Logloss", "MultiClass", "Poisson"]),
    depth=st.integers(1, 6),
    trees=st.integers(1, 30),
    nan=st.sampled_from([0.0, 0.1]),
    seed=st.integers(0, 2**16),
)
def test_catboost_oblivious_trees_equal_its_raw_formula_values(
    loss: str, depth: int, trees: int, nan: float, seed: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    rng = np.random.default_rng(seed)
    x = _rows(rng, 300, nan)
    target = {"RMSE": "reg:squarederror", "Logloss": "binary:", "MultiClass": "multi:", "Poisson": "count:poisson"}
    y = _target(target[loss], x, rng)
    if loss == "Poisson":
        y = np.round(y)
    model = catboost.CatBoost(
        {"loss_function": loss, "depth": depth, "iterations": trees, "verbose": 0, "allow_writing_files": False}
    ).fit(x, y)
    path = tmp_path_factory.mktemp("catboost") / "model.json"
    model.save_model(str(path), format="json")
    ensemble = from_catboost(json.loads(path.read_text()))
    probe = _rows(rng, 400, nan)
    raw = np.asarray(model.predict(probe, prediction_type="RawFormulaVal")).reshape(probe.shape[0], -1)
    assert np.array_equal(ensemble.predict_raw(probe), raw)


# -- the files, through the CLI ----------------------------------------------------------------------------
def _ferry(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ferry", *args], capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="module")
def booster_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """Files written by the libraries' own save_model, and the fitted objects that wrote them."""
    folder = tmp_path_factory.mktemp("boosters")
    rng = np.random.default_rng(7)
    x = _rows(rng, 400, 0.05)
    binary, three = _target("binary:", x, rng), _target("multi:", x, rng)
    models: dict[str, Any] = {
        "xgb-binary.json": xgboost.XGBClassifier(n_estimators=20, max_depth=3).fit(x, binary),
        "xgb-multi.ubj": xgboost.XGBClassifier(n_estimators=15, max_depth=3).fit(x, three),
        "xgb-reg.json": xgboost.XGBRegressor(n_estimators=20).fit(x, _target("reg", x, rng)),
        "cb-binary.cbm": catboost.CatBoostClassifier(iterations=20, verbose=0, allow_writing_files=False).fit(
            x, np.where(binary == 1, "yes", "no")
        ),
        "cb-multi.cbm": catboost.CatBoostClassifier(
            iterations=15, loss_function="MultiClass", verbose=0, allow_writing_files=False
        ).fit(x, three),
        "cb-reg.cbm": catboost.CatBoostRegressor(iterations=20, verbose=0, allow_writing_files=False).fit(
            x, _target("reg", x, rng)
        ),
    }
    for name, model in models.items():
        model.save_model(str(folder / name))
    return folder, models


@pytest.fixture(scope="module")
def booster_server(booster_files: tuple[Path, dict[str, Any]]) -> Iterator[tuple[ServerProcess, dict[str, str]]]:
    folder, models = booster_files
    compiled = {}
    for name in models:
        result = _ferry("build", name, "--name", name.split(".")[0], "--repo", "models", cwd=folder)
        assert result.returncode == 0, result.stderr
        compiled[name] = result.stderr
    server = ServerProcess([str(folder / "models")], env={"FERRY_TRUST_CODE": "0"})
    yield server, compiled
    server.stop()


def test_files_are_known_by_their_content_not_their_name(booster_files: tuple[Path, dict[str, Any]]) -> None:
    folder, _ = booster_files
    for source, disguise in [("xgb-binary.json", "a.bin"), ("xgb-multi.ubj", "b.json"), ("cb-reg.cbm", "c.model")]:
        (folder / disguise).write_bytes((folder / source).read_bytes())
    assert [sniff(folder / n) for n in ("a.bin", "b.json", "c.model")] == ["xgboost", "xgboost", "catboost"]


def test_builds_compile_where_exact_and_say_why_not(booster_server: tuple[ServerProcess, dict[str, str]]) -> None:
    _, output = booster_server
    for name in ("xgb-binary.json", "xgb-multi.ubj", "xgb-reg.json", "cb-binary.cbm", "cb-reg.cbm"):
        assert "compiled form: yes" in output[name], output[name]
    # CatBoost's softmax uses its own fast exp: the probabilities differ in the last bit, so the library serves.
    assert "compiled form: no: compiled probability differs" in output["cb-multi.cbm"]


@pytest.mark.parametrize("name", ["xgb-binary.json", "xgb-multi.ubj", "xgb-reg.json", "cb-binary.cbm", "cb-multi.cbm"])
def test_answers_equal_the_librarys_predict_on_native_and_v2(
    name: str, booster_files: tuple[Path, dict[str, Any]], booster_server: tuple[ServerProcess, dict[str, str]]
) -> None:
    _, models = booster_files
    server, _ = booster_server
    model, model_name = models[name], name.split(".")[0]
    rows = _rows(np.random.default_rng(11), 25, 0.0)
    expected = model.predict(rows).reshape(-1).tolist()
    proba = model.predict_proba(rows).tolist() if hasattr(model, "predict_proba") else None
    features = [f"f{i}" for i in range(WIDTH)]
    records = [dict(zip(features, row, strict=True)) for row in rows.tolist()]
    native = httpx.post(f"{server.url}/models/{model_name}/predict", json=records, timeout=30).json()
    assert native["predictions"] == expected
    assert [type(v) for v in native["predictions"]] == [type(v) for v in expected]  # 0/1 as integers, "yes" as text
    if proba is not None:
        classes = [str(c) for c in model.classes_]
        assert native["probabilities"] == [dict(zip(classes, p, strict=True)) for p in proba]
    body = {
        "inputs": [{"name": "input-0", "shape": list(rows.shape), "datatype": "FP64", "data": rows.ravel().tolist()}]
    }
    v2 = httpx.post(f"{server.url}/v2/models/{model_name}/infer", json=body, timeout=30).json()
    outputs = v2["outputs"]
    assert outputs[0]["data"] == expected
    if proba is not None:
        assert outputs[1]["shape"] == [len(rows), len(model.classes_)]
        assert outputs[1]["data"] == [v for p in proba for v in p]
    # MLServer's names for its XGBoost and CatBoost runtimes, and the metadata says what infer answers
    assert [o["name"] for o in outputs] == ["predict", "predict_proba"][: len(outputs)]
    metadata = httpx.get(f"{server.url}/v2/models/{model_name}", timeout=30).json()["outputs"]
    assert [(o["name"], o["datatype"]) for o in metadata] == [(o["name"], o["datatype"]) for o in outputs]
    proba_dtype = {"float32": "FP32", "float64": "FP64"}
    if proba is not None:  # the library's own float: XGBoost's float32, CatBoost's float64
        assert outputs[1]["datatype"] == proba_dtype[str(model.predict_proba(rows).dtype)]
    asked = {**body, "outputs": [{"name": "predict_proba" if proba is not None else "predict"}]}
    only = httpx.post(f"{server.url}/v2/models/{model_name}/infer", json=asked, timeout=30)
    assert only.status_code == 200 and len(only.json()["outputs"]) == 1, only.text


@pytest.mark.parametrize("name", ["xgb-binary.json", "xgb-multi.ubj", "xgb-reg.json", "cb-binary.cbm", "cb-multi.cbm"])
def test_a_missing_value_is_answered_as_the_library_answers_it(
    name: str, booster_files: tuple[Path, dict[str, Any]], booster_server: tuple[ServerProcess, dict[str, str]]
) -> None:
    """XGBoost and CatBoost take a missing value in any feature (trees route it): null in a record, NaN in a
    binary tensor, answered as the library's predict on NaN, never refused (they were a 400 by default)."""
    _, models = booster_files
    server, _ = booster_server
    model, model_name = models[name], name.split(".")[0]
    rows = _rows(np.random.default_rng(14), 30, 0.3)
    assert np.isnan(rows).any()
    features = [f"f{i}" for i in range(WIDTH)]
    records = [{f: (None if np.isnan(v) else v) for f, v in zip(features, row, strict=True)} for row in rows.tolist()]
    native = httpx.post(f"{server.url}/models/{model_name}/predict", json=records, timeout=30)
    assert native.status_code == 200, native.text
    assert native.json()["predictions"] == model.predict(rows).reshape(-1).tolist()
    if hasattr(model, "predict_proba"):
        classes = [str(c) for c in model.classes_]
        expected = [dict(zip(classes, p, strict=True)) for p in model.predict_proba(rows).tolist()]
        assert native.json()["probabilities"] == expected
    header = {
        "inputs": [
            {
                "name": "input-0",
                "shape": list(rows.shape),
                "datatype": "FP64",
                "parameters": {"binary_data_size": rows.nbytes},
            }
        ]
    }
    head = json.dumps(header).encode()
    v2 = httpx.post(
        f"{server.url}/v2/models/{model_name}/infer",
        content=head + rows.astype("<f8").tobytes(),
        headers={"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"},
        timeout=30,
    )
    assert v2.status_code == 200, v2.text
    assert v2.json()["outputs"][0]["data"] == model.predict(rows).reshape(-1).tolist()


def test_regression_answers_are_the_float32_values_xgboost_gives(
    booster_files: tuple[Path, dict[str, Any]], booster_server: tuple[ServerProcess, dict[str, str]]
) -> None:
    _, models = booster_files
    server, _ = booster_server
    rows = _rows(np.random.default_rng(12), 30, 0.1)
    rows[np.isnan(rows)] = 0.0
    for name in ("xgb-reg.json", "cb-reg.cbm"):
        body = {
            "inputs": [
                {"name": "input-0", "shape": list(rows.shape), "datatype": "FP64", "data": rows.ravel().tolist()}
            ]
        }
        v2 = httpx.post(f"{server.url}/v2/models/{name.split('.')[0]}/infer", json=body, timeout=30).json()
        assert v2["outputs"][0]["data"] == models[name].predict(rows).tolist()


def test_original_models_serve_through_the_libraries_with_the_same_answers(
    booster_files: tuple[Path, dict[str, Any]],
    booster_server: tuple[ServerProcess, dict[str, str]],
    inprocess: Callable[..., InProcessServer],
) -> None:
    folder, models = booster_files
    client = inprocess(folder / "models", "--original-models", env={"FERRY_TRUST_CODE": "0"}).client
    rows = _rows(np.random.default_rng(13), 20, 0.0)
    records = [dict(zip([f"f{i}" for i in range(WIDTH)], row, strict=True)) for row in rows.tolist()]
    for name in ("xgb-binary.json", "xgb-multi.ubj", "cb-binary.cbm", "cb-reg.cbm"):
        got = client.post(f"/models/{name.split('.')[0]}/predict", json=records, timeout=30).json()
        assert got["predictions"] == models[name].predict(rows).reshape(-1).tolist()


def test_an_unknown_file_names_what_ferry_reads_and_the_way_forward(tmp_path: Path) -> None:
    (tmp_path / "model.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))
    result = _ferry("build", "model.h5", "--name", "m", "--repo", "models", cwd=tmp_path)
    assert result.returncode == 1
    message = result.stderr
    for known in ("skops", "LightGBM", "ONNX", "XGBoost", "CatBoost", "export the model to ONNX", "Python class"):
        assert known in message, message


def test_the_image_installs_the_library_only_for_a_bundle_that_needs_it(
    booster_files: tuple[Path, dict[str, Any]], booster_server: tuple[ServerProcess, dict[str, str]]
) -> None:
    from ferry.deploy.dockerfile import image_spec_for, render_requirements

    folder, _ = booster_files
    spec = image_spec_for(folder / "models", "boosters:test")
    requirements = render_requirements(spec)
    assert "catboost==" in requirements  # cb-multi serves through CatBoost
    assert "xgboost==" not in requirements  # every XGBoost bundle compiled: numpy serves them
    original = render_requirements(image_spec_for(folder / "models", "boosters:test", original_models=True))
    assert "xgboost==" in original and "catboost==" in original


def test_a_lightgbm_text_model_takes_missing_values_as_lightgbm_does(
    tmp_path: Path, inprocess: Callable[..., InProcessServer]
) -> None:
    """LightGBM's own file, fitted with missing values, built with no options: null is its missing value."""
    import lightgbm

    rng = np.random.default_rng(15)
    x = _rows(rng, 400, 0.2)
    booster = lightgbm.train(
        {"objective": "binary", "verbose": -1, "min_data_in_leaf": 5},
        lightgbm.Dataset(x, _target("binary:", x, rng)),
        20,
    )
    booster.save_model(str(tmp_path / "model.txt"))
    built = _ferry("build", "model.txt", "--name", "lgb", "--repo", "models", cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    rows = _rows(np.random.default_rng(16), 30, 0.3)
    names = booster.feature_name()
    records = [{f: (None if np.isnan(v) else v) for f, v in zip(names, row, strict=True)} for row in rows.tolist()]
    for options in ((), ("--original-models",)):  # the compiled form, and LightGBM itself
        client = inprocess(tmp_path / "models", *options).client
        answer = client.post("/models/lgb/predict", json=records)
        assert answer.status_code == 200, answer.text
        assert answer.json()["predictions"] == booster.predict(rows).tolist()


@pytest.mark.parametrize("suffix", ["json", "ubj"])
def test_an_xgboost_model_fitted_on_pandas_categoricals_takes_the_categories(
    tmp_path: Path, inprocess: Callable[..., InProcessServer], suffix: str
) -> None:
    """XGBoost (2.1+) saves a categorical feature's categories: clients send them by name, text or numbers, and get
    the library's own answer on the same DataFrame; an unseen or missing category is XGBoost's missing value. (A
    category's code was asked for instead, and any number, codes of no category too, answered in silence.)"""
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(17)
    n, colours, sizes = 400, ["red", "blue", "green"], [30, 10, 20]  # categories in training order, not sorted

    def frame(colour: list[Any], size: list[Any], num: list[float]) -> Any:
        return pd.DataFrame(
            {
                "num": num,
                "colour": pd.Categorical(colour, categories=colours),
                "size": pd.Categorical(size, categories=sizes),
            }
        )

    train = frame(list(rng.choice(colours, n)), list(rng.choice(sizes, n)), list(rng.normal(size=n)))
    target = ((train.colour == "blue") | ((train["size"] == 10) & (train.num > 0))).astype(int)
    model = xgboost.XGBClassifier(n_estimators=15, max_depth=3, enable_categorical=True).fit(train, target)
    model.save_model(str(tmp_path / f"model.{suffix}"))
    built = _ferry("build", f"model.{suffix}", "--name", "cats", "--repo", "models", cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    client = inprocess(tmp_path / "models").client
    asked = [("red", 30, 0.5), ("blue", 10, -1.0), ("green", 20, 2.0), ("purple", 10, 0.1), (None, None, 0.3)]
    records = [{"num": num, "colour": colour, "size": size} for colour, size, num in asked]
    answer = client.post("/models/cats/predict", json=records)
    assert answer.status_code == 200, answer.text
    expected = frame([a[0] for a in asked], [a[1] for a in asked], [a[2] for a in asked])  # purple: not a category
    assert answer.json()["predictions"] == model.predict(expected).tolist()
    assert [[p["0"], p["1"]] for p in answer.json()["probabilities"]] == model.predict_proba(expected).tolist()
    inputs = {i["name"]: i["datatype"] for i in client.get("/v2/models/cats").json()["inputs"]}
    assert inputs == {"num": "FP64", "colour": "BYTES", "size": "INT64"}, inputs
    coded = client.post("/models/cats/predict", json={"num": 0.5, "colour": 2, "size": 30})  # a code, not a colour
    assert coded.status_code == 400 and "colour" in coded.json()["field"], coded.text


def test_an_xgboost_file_with_categories_ferry_cannot_read_keeps_codes_and_says_so(tmp_path: Path) -> None:
    """From an adversarial review: categories not as XGBoost writes them (duplicates, offsets out of order) leave
    the feature taking XGBoost's codes, with a warning at build, never categories that share a code; a file
    XGBoost itself refuses is one line naming it, without XGBoost's native stack trace."""
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(18)
    train = pd.DataFrame(
        {"num": rng.normal(size=200), "c": pd.Categorical(rng.choice(["z", "a", "m"], 200), categories=["z", "a", "m"])}
    )
    model = xgboost.XGBRegressor(n_estimators=3, enable_categorical=True).fit(train, rng.normal(size=200))
    model.save_model(str(tmp_path / "good.json"))
    saved = json.loads((tmp_path / "good.json").read_text())
    encoded = saved["learner"]["gradient_booster"]["model"]["cats"]["enc"][1]
    assert encoded["offsets"] == [0, 1, 2, 3]
    encoded["values"] = [ord("a"), ord("a"), ord("b")]  # two categories named 'a'
    (tmp_path / "dup.json").write_text(json.dumps(saved))
    built = _ferry("build", "dup.json", "--name", "dup", "--repo", "models", cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    assert "warning: categorical feature 'c': the file holds no categories Ferry can read" in built.stderr
    manifest = yaml.safe_load((tmp_path / "models" / "dup" / "1" / "ferry.yaml").read_text())
    assert "categories" not in manifest["input"]["features"][1]
    saved["learner"]["gradient_booster"]["model"]["cats"]["enc"] = 7  # XGBoost refuses the file
    (tmp_path / "bad.json").write_text(json.dumps(saved))
    refused = _ferry("build", "bad.json", "--name", "bad", "--repo", "models", cwd=tmp_path)
    errors = [line for line in refused.stderr.strip().splitlines() if not line.startswith("warning: ")]
    assert refused.returncode == 1 and len(errors) == 1, refused.stderr
    assert errors[0].startswith("error: model.json: XGBoost cannot read it:") and "Stack trace" not in errors[0]
