"""Explanations of XGBoost and CatBoost files as their libraries save them, built with ``ferry build`` and
served by a real ``ferry serve``: XGBoost's own ``pred_contribs`` (computed in float32, so equal within a
stated bound), CatBoost against a brute-force Shapley sum of the path-dependent game, additivity on every row.

CatBoost's own ``ShapValues`` (and ``shap.TreeExplainer``, which asks CatBoost for them) are not
path-dependent TreeSHAP once an oblivious tree is deeper than two levels: they agree with Ferry on stumps
(checked below) and differ beyond, where the brute-force sum of the game TreeSHAP defines agrees with Ferry.
"""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from tests.conftest import ServerProcess

catboost = pytest.importorskip("catboost")
xgboost = pytest.importorskip("xgboost")

from ferry.bundle.boosters import catboost_json  # noqa: E402
from ferry.runtimes.explain import TreeShap  # noqa: E402
from ferry.runtimes.trees import TreeEnsemble, from_catboost, from_xgboost  # noqa: E402

WIDTH = 4
FEATURES = [f"f{i}" for i in range(WIDTH)]
# XGBoost sums its contributions in float32: Ferry's float64 ones are equal to this bound.
XGBOOST_RTOL, XGBOOST_ATOL = 1e-5, 1e-6


def _rows(seed: int, count: int, nan: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(scale=2.0, size=(count, WIDTH))
    x[rng.random(x.shape) < nan] = np.nan
    return x


def _signal(x: np.ndarray) -> np.ndarray:
    return np.nan_to_num(x[:, 0]) + 0.5 * np.nan_to_num(x[:, 1]) * np.nan_to_num(x[:, 2])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, dict[str, Any]]]:
    folder = tmp_path_factory.mktemp("explain-boosters")
    x = _rows(3, 400, 0.1)
    signal = _signal(x)
    models: dict[str, Any] = {
        "xgb-reg.json": xgboost.XGBRegressor(n_estimators=25, max_depth=4).fit(x, signal),
        "xgb-binary.ubj": xgboost.XGBClassifier(n_estimators=20, max_depth=3).fit(x, (signal > 0).astype(int)),
        "xgb-multi.json": xgboost.XGBClassifier(n_estimators=15, max_depth=3).fit(x, np.digitize(signal, [-1, 1])),
        "cb-reg.cbm": catboost.CatBoostRegressor(iterations=8, depth=3, verbose=0, allow_writing_files=False).fit(
            x, signal
        ),
        "cb-binary.cbm": catboost.CatBoostClassifier(iterations=8, depth=3, verbose=0, allow_writing_files=False).fit(
            x, np.where(signal > 0, "yes", "no")
        ),
    }
    for name, model in models.items():
        model.save_model(str(folder / name))
        built = subprocess.run(
            [sys.executable, "-m", "ferry", "build", name, "--name", name.split(".")[0], "--repo", "models"],
            capture_output=True,
            text=True,
            cwd=folder,
            check=False,
        )
        assert built.returncode == 0 and "compiled form: yes" in built.stderr, built.stderr
        assert (folder / "models" / name.split(".")[0] / "1" / "compiled-trees-cover.npy").is_file()
    server = ServerProcess([str(folder / "models")], env={"FERRY_TRUST_CODE": "0"})
    yield server, models
    server.stop()


def _explain(server: ServerProcess, name: str, rows: np.ndarray) -> dict[str, Any]:
    response = httpx.post(f"{server.url}/models/{name}/explain", json={"instances": rows.tolist()}, timeout=30)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _matrix(body: dict[str, Any], outputs: list[str] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[rows, outputs, features] contributions, [outputs] expected values, [rows, outputs] raw scores."""
    keys = outputs or [None]
    pick = lambda value, key: value if key is None else value[key]  # noqa: E731
    values = np.asarray([[[pick(row, k)[f] for f in FEATURES] for k in keys] for row in body["contributions"]])
    expected = np.asarray([pick(body["expected_value"], k) for k in keys])
    scores = np.asarray([[pick(score, k) for k in keys] for score in body["raw_scores"]])
    return values, expected, scores


@pytest.mark.parametrize("name", ["xgb-reg", "xgb-binary", "xgb-multi"])
def test_xgboost_explanations_equal_pred_contribs_within_float32(
    name: str, served: tuple[ServerProcess, dict[str, Any]]
) -> None:
    server, models = served
    model = models[name + (".ubj" if name == "xgb-binary" else ".json")]
    rows = _rows(5, 40)
    body = _explain(server, name, rows)
    assert body["method"] == "tree_shap"
    outputs = ["0", "1", "2"] if name == "xgb-multi" else None
    values, expected, scores = _matrix(body, [str(k) for k in outputs] if outputs else None)
    reference = model.get_booster().predict(xgboost.DMatrix(rows), pred_contribs=True)
    reference = np.asarray(reference).reshape(len(rows), -1, WIDTH + 1)
    np.testing.assert_allclose(values, reference[:, :, :WIDTH], rtol=XGBOOST_RTOL, atol=XGBOOST_ATOL)
    np.testing.assert_allclose(expected, reference[0, :, WIDTH], rtol=XGBOOST_RTOL, atol=XGBOOST_ATOL)
    margin = model.get_booster().predict(xgboost.DMatrix(rows), output_margin=True).reshape(len(rows), -1)
    assert np.array_equal(scores, margin.astype(np.float64))  # the raw score is the model's own, float32
    # Additivity on every row: float64 contributions against XGBoost's float32 sum of the same leaves.
    np.testing.assert_allclose(values.sum(axis=2) + expected, scores, rtol=XGBOOST_RTOL, atol=XGBOOST_ATOL)


def _conditional(ensemble: TreeEnsemble, x: np.ndarray, known: set[int]) -> np.ndarray:
    """E[f(x) | x_known] as path-dependent TreeSHAP defines it: unknown splits weigh both sides by cover."""
    cover = np.asarray(ensemble.cover)

    def walk(node: int) -> np.ndarray:
        left, right = (int(c) for c in ensemble.children[node])
        if left == node:
            return np.asarray(ensemble.leaf_value[node])
        if int(ensemble.feature[node]) in known:
            goes_right = ensemble.go_right(x[None, :], np.asarray([node]))[0, 0]
            return walk(right if goes_right else left)
        if cover[node] <= 0:
            return np.zeros(ensemble.leaf_value.shape[1])
        return (cover[left] * walk(left) + cover[right] * walk(right)) / cover[node]

    total = np.asarray(ensemble.init, dtype=np.float64).copy()
    for tree, root in enumerate(ensemble.roots):
        value = walk(int(root))
        if value.size == 1:
            total[ensemble.tree_column[tree]] += value[0]
        else:
            total += value
    return total


def _brute_force_shapley(ensemble: TreeEnsemble, row: np.ndarray) -> np.ndarray:
    """[outputs, features used]: the Shapley sum over every coalition of the path-dependent game."""
    x = row[ensemble.features_used]
    count = x.size
    phi = np.zeros((ensemble.n_outputs, count))
    for i in range(count):
        others = [j for j in range(count) if j != i]
        for size in range(count):
            weight = math.factorial(size) * math.factorial(count - size - 1) / math.factorial(count)
            for subset in itertools.combinations(others, size):
                phi[:, i] += weight * (_conditional(ensemble, x, {*subset, i}) - _conditional(ensemble, x, set(subset)))
    return phi


@pytest.mark.parametrize("name", ["cb-reg", "cb-binary"])
def test_catboost_explanations_equal_the_brute_force_shapley_sum(
    name: str, served: tuple[ServerProcess, dict[str, Any]]
) -> None:
    server, models = served
    model = models[name + ".cbm"]
    rows = _rows(6, 12)
    body = _explain(server, name, rows)
    assert body["method"] == "tree_shap"
    values, expected, scores = _matrix(body, None)
    raw = model.predict(rows, prediction_type="RawFormulaVal").reshape(len(rows), -1)
    np.testing.assert_allclose(scores, raw, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(values.sum(axis=2) + expected, scores, rtol=1e-9, atol=1e-12)  # additivity
    ensemble = from_catboost(catboost_json(model))
    for row, found in zip(rows, values, strict=True):
        np.testing.assert_allclose(found[:, ensemble.features_used], _brute_force_shapley(ensemble, row), atol=1e-12)
    # CatBoost's own expected value is the same cover-weighted mean of the leaves.
    reference = np.asarray(model.get_feature_importance(catboost.Pool(rows), type="ShapValues"))
    np.testing.assert_allclose(expected, reference[0, WIDTH:], rtol=1e-9, atol=1e-12)


def test_catboost_stumps_equal_catboosts_own_shap_values() -> None:
    x = _rows(8, 300)
    model = catboost.CatBoostRegressor(iterations=10, depth=1, verbose=0, allow_writing_files=False).fit(x, _signal(x))
    found = TreeShap(from_catboost(catboost_json(model))).explain(x[:50])
    reference = np.asarray(model.get_feature_importance(catboost.Pool(x[:50]), type="ShapValues"))
    np.testing.assert_allclose(found.values[:, 0, :], reference[:, :WIDTH], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("objective", ["reg:squarederror", "binary:logistic", "multi:softprob"])
def test_xgboost_missing_values_take_the_default_side_as_pred_contribs_does(objective: str) -> None:
    """(The native route's schema refuses null for a booster file's features, so NaN is checked in process.)"""
    x = _rows(10, 400, 0.2)
    signal = _signal(x)
    target = {"reg": signal, "bin": signal > 0, "mul": np.digitize(signal, [-1, 1])}[objective[:3]]
    params = {"objective": objective, "max_depth": 5, **({"num_class": 3} if objective.startswith("multi") else {})}
    booster = xgboost.train(params, xgboost.DMatrix(x, target.astype(float)), 20)
    ensemble, _ = from_xgboost(json.loads(booster.save_raw("json")))
    rows = _rows(11, 200, 0.3)
    found = TreeShap(ensemble).explain(rows)
    reference = np.asarray(booster.predict(xgboost.DMatrix(rows), pred_contribs=True)).reshape(len(rows), -1, WIDTH + 1)
    np.testing.assert_allclose(found.values, reference[:, :, :WIDTH], rtol=XGBOOST_RTOL, atol=XGBOOST_ATOL)
    np.testing.assert_allclose(found.values.sum(axis=2) + found.expected_value, found.score, rtol=1e-5, atol=1e-6)


def test_an_xgboost_json_without_covers_is_not_explainable() -> None:
    x = _rows(9, 200)
    booster = xgboost.train({"max_depth": 2}, xgboost.DMatrix(x, _signal(x)), 3)
    model = json.loads(booster.save_raw("json"))
    for tree in model["learner"]["gradient_booster"]["model"]["trees"]:
        del tree["sum_hessian"]
    ensemble, _ = from_xgboost(model)
    assert ensemble.cover is None
