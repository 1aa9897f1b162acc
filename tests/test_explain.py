"""Explanations: exact contributions from Ferry's own tree evaluator and linear steps, checked against
LightGBM's ``pred_contrib``, shap's ``TreeExplainer`` and a brute-force Shapley sum over every subset.

Contributions plus the expected value must give the raw score on every row; NaN and zeros take each
split's default direction, as predictions do.
"""

from __future__ import annotations

import itertools
import math
import warnings
from pathlib import Path
from typing import Any

import lightgbm
import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.ensemble import (
    ExtraTreesRegressor,
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

import ferry
from ferry.runtimes import explain
from ferry.runtimes.compiled import CompiledRuntime
from ferry.runtimes.explain import Contributions, NotExplainable, TreeShap
from ferry.runtimes.load import load_bundle
from ferry.runtimes.trees import ARRAY_NAMES, TreeEnsemble, from_lightgbm, from_sklearn

N = 5
_rng = np.random.default_rng(11)
_X = _rng.normal(size=(400, N))
_Y = _X[:, 0] + _X[:, 1] * _X[:, 2] + _rng.normal(scale=0.3, size=400)
_Y3 = np.digitize(_Y, [-0.7, 0.7])
_XNAN = _X.copy()
_XNAN[_rng.random(_X.shape) < 0.1] = np.nan


def _probe(rng: np.random.Generator, rows: int, nan: bool = True) -> np.ndarray:
    x = rng.normal(size=(rows, N))
    if nan:
        x[rng.random(x.shape) < 0.15] = np.nan
    x[rng.random(x.shape) < 0.15] = rng.choice([0.0, -0.0, 1e-36])
    return x


def assert_additive(found: Contributions) -> None:
    total = found.values.sum(axis=2) + found.expected_value
    np.testing.assert_allclose(total, found.score, rtol=1e-9, atol=1e-9 * max(1.0, float(np.abs(found.score).max())))


def assert_close(mine: np.ndarray, reference: np.ndarray) -> None:
    """1e-9 relative, on the scale of the largest contribution (a sum of signed terms may land near zero)."""
    scale = max(float(np.abs(reference).max()), 1e-300)
    np.testing.assert_allclose(mine, reference, rtol=1e-9, atol=1e-12 * scale)


# -- LightGBM: pred_contrib -------------------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    objective=st.sampled_from(["regression", "binary", "multiclass", "poisson"]),
    zero_as_missing=st.booleans(),
)
def test_tree_shap_equals_lightgbms_pred_contrib(seed: int, objective: str, zero_as_missing: bool) -> None:
    rng = np.random.default_rng(seed)
    x = _probe(rng, 300)
    y = np.nan_to_num(x[:, 0]) + np.nan_to_num(x[:, 1]) * np.nan_to_num(x[:, 2]) + rng.normal(scale=0.3, size=300)
    label = {
        "regression": y,
        "binary": (y > 0).astype(int),
        "multiclass": np.digitize(y, [-0.5, 0.5]),
        "poisson": np.exp(y / 4),
    }[objective]
    params: dict[str, Any] = {
        "objective": objective,
        "num_leaves": int(rng.integers(2, 40)),
        "min_data_in_leaf": int(rng.integers(1, 20)),
        "zero_as_missing": zero_as_missing,
        "verbose": -1,
    }
    if objective == "multiclass":
        params["num_class"] = 3
    booster = lightgbm.train(params, lightgbm.Dataset(x, label), num_boost_round=int(rng.integers(1, 30)))
    ensemble, _ = from_lightgbm(booster.dump_model())
    probe = _probe(rng, 200)
    found = TreeShap(ensemble).explain(probe)
    reference = np.asarray(booster.predict(probe, pred_contrib=True)).reshape(200, -1, N + 1)  # [.., class, F + 1]
    assert_close(found.values, reference[:, :, :N])
    assert_close(np.broadcast_to(found.expected_value, (200, found.values.shape[1])), reference[:, :, N])
    np.testing.assert_array_equal(found.score, np.asarray(booster.predict(probe, raw_score=True)).reshape(200, -1))
    assert_additive(found)


def test_untabulated_leaves_give_the_tabulated_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Leaves past the table budget are computed per row: the same numbers."""
    booster = lightgbm.train(
        {"objective": "multiclass", "num_class": 3, "num_leaves": 31, "min_data_in_leaf": 2, "verbose": -1},
        lightgbm.Dataset(_XNAN, _Y3),
        num_boost_round=15,
    )
    ensemble, _ = from_lightgbm(booster.dump_model())
    probe = _probe(np.random.default_rng(5), 64)
    tabulated = TreeShap(ensemble)
    found = tabulated.explain(probe)
    assert all(group.table is not None for group in tabulated.groups)
    monkeypatch.setattr(explain, "TABLE_BYTES", 0)
    untabulated = TreeShap(ensemble)
    direct = untabulated.explain(probe)
    assert all(group.table is None for group in untabulated.groups)
    np.testing.assert_allclose(direct.values, found.values, rtol=1e-12, atol=1e-15)
    reference = np.asarray(booster.predict(probe, pred_contrib=True)).reshape(64, 3, N + 1)
    assert_close(direct.values, reference[:, :, :N])
    one_by_one = np.concatenate([untabulated.explain(probe[i : i + 1]).values for i in range(64)])
    np.testing.assert_allclose(one_by_one, direct.values, rtol=1e-12, atol=1e-15)


def test_deep_leaves_answers_kept_or_dropped_at_the_bound_give_the_same_numbers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Untabulated answers are kept once computed (rows seen again read them back); past CACHE_BYTES the
    cache starts over. Either way the numbers are LightGBM's."""
    booster = lightgbm.train(
        {"objective": "regression", "num_leaves": 31, "min_data_in_leaf": 2, "verbose": -1},
        lightgbm.Dataset(_XNAN, _Y),
        num_boost_round=10,
    )
    ensemble, _ = from_lightgbm(booster.dump_model())
    probe = _probe(np.random.default_rng(8), 50)
    reference = np.asarray(booster.predict(probe, pred_contrib=True))[:, :N]
    monkeypatch.setattr(explain, "TABLE_BYTES", 0)
    kept = TreeShap(ensemble)
    assert not hasattr(kept, "groups")  # built by the first explanation, not when the model loads
    kept._ready()
    assert all(group.table is None and group.cache is not None and not group.cache.entries for group in kept.groups)
    first = kept.explain(probe).values[:, 0, :]
    assert all(group.cache is not None and group.cache.entries for group in kept.groups)
    again = kept.explain(probe[::-1]).values[::-1, 0, :]
    assert_close(first, reference)
    assert_close(again, reference)
    one_by_one = TreeShap(ensemble)  # new keys join a small level, merged into the large one as it grows
    for i in range(50):
        assert_close(one_by_one.explain(probe[i : i + 1]).values[:, 0, :], reference[i : i + 1])
    (cache,) = [g.cache for g in one_by_one.groups]
    assert cache is not None and len(cache.levels) < 4
    keys = np.concatenate([k for k, _ in cache.levels])
    assert np.unique(keys).size == keys.size and all(np.all(np.diff(k) > 0) for k, _ in cache.levels)
    monkeypatch.setattr(explain, "CACHE_BYTES", 64)
    bounded = TreeShap(ensemble)
    for lo in range(0, 50, 10):
        assert_close(bounded.explain(probe[lo : lo + 10]).values[:, 0, :], reference[lo : lo + 10])
        assert all(g.cache is None or g.cache.entries * g.cache.entry <= 64 for g in bounded.groups)


def test_answers_seeded_one_or_two_slots_from_the_reference_are_lightgbms(monkeypatch: pytest.MonkeyPatch) -> None:
    """Untabulated leaves' answers for patterns near the reference row's are computed with the tables: rows
    never seen before read them, and the numbers are LightGBM's."""
    booster = lightgbm.train(
        {"objective": "binary", "num_leaves": 31, "min_data_in_leaf": 2, "verbose": -1},
        lightgbm.Dataset(_XNAN, _Y > 0),
        num_boost_round=10,
    )
    ensemble, _ = from_lightgbm(booster.dump_model())
    probe = _probe(np.random.default_rng(9), 80)
    reference = np.asarray(booster.predict(probe, pred_contrib=True))[:, :N]
    monkeypatch.setattr(explain, "TABLE_MAX_FEATURES", 0)  # every leaf untabulated, the seed within the budget
    seeded = TreeShap(ensemble)
    seeded._ready()
    (group,) = seeded.groups
    assert group.table is None and group.cache is not None and group.cache.seed is not None
    assert_close(seeded.explain(probe).values[:, 0, :], reference)
    assert group.cache.entries < 80 * group.zero.shape[0] / 2  # mostly seeded
    one_by_one = np.concatenate([seeded.explain(probe[i : i + 1]).values[:, 0, :] for i in range(80)])
    assert_close(one_by_one, reference)
    monkeypatch.setattr(explain, "TABLE_BYTES", 0)  # no room: nothing seeded, the same numbers
    bare = TreeShap(ensemble)
    assert_close(bare.explain(probe).values[:, 0, :], reference)
    assert bare.groups[0].cache is not None and bare.groups[0].cache.seed is None


# -- scikit-learn: shap.TreeExplainer and brute force ------------------------------------------------------
SKLEARN: dict[str, Any] = {
    "decision-tree-classifier": lambda: DecisionTreeClassifier(max_depth=6, random_state=0).fit(_X, _Y3),
    "decision-tree-regressor-nan": lambda: DecisionTreeRegressor(max_depth=8, random_state=0).fit(_XNAN, _Y),
    "random-forest-classifier": lambda: RandomForestClassifier(15, max_depth=5, random_state=0).fit(_X, _Y3),
    "random-forest-classifier-nan": lambda: RandomForestClassifier(8, random_state=0).fit(_XNAN, _Y3),
    "random-forest-regressor": lambda: RandomForestRegressor(8, random_state=0).fit(_X, _Y),
    "extra-trees-regressor": lambda: ExtraTreesRegressor(8, max_depth=7, random_state=0).fit(_X, _Y),
    "gb-binary": lambda: GradientBoostingClassifier(n_estimators=20, random_state=0).fit(_X, _Y > 0),
    "gb-3class": lambda: GradientBoostingClassifier(n_estimators=8, max_depth=2, random_state=0).fit(_X, _Y3),
    "gb-regressor": lambda: GradientBoostingRegressor(n_estimators=25, random_state=0).fit(_X, _Y),
}
SHAP_LACKS = {"gb-3class"}  # shap's TreeExplainer refuses multiclass gradient boosting


@pytest.fixture(scope="module")
def sklearn_models() -> dict[str, Any]:
    return {name: make() for name, make in SKLEARN.items()}


@pytest.mark.parametrize("name", sorted(set(SKLEARN) - SHAP_LACKS))
def test_tree_shap_equals_shaps_tree_explainer(sklearn_models: dict[str, Any], name: str) -> None:
    shap = pytest.importorskip("shap")
    model = sklearn_models[name]
    probe = _probe(np.random.default_rng(1), 60, nan=name.endswith("-nan"))
    found = TreeShap(from_sklearn(model)).explain(probe)
    explainer = shap.TreeExplainer(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values = np.asarray(explainer.shap_values(probe, check_additivity=False))
    values = values[:, :, None] if values.ndim == 2 else values  # [rows, features, outputs]
    assert_close(found.values, values.transpose(0, 2, 1))
    assert_close(found.expected_value, np.atleast_1d(explainer.expected_value))
    assert_additive(found)


def test_forest_tables_without_the_class_values_folded_in_give_the_same_numbers(
    sklearn_models: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A forest's class values are folded into its tables only where all then fit TABLE_BYTES; otherwise the
    tables hold the shares and the values multiply them after the lookup."""
    ensemble = from_sklearn(sklearn_models["random-forest-classifier-nan"])
    probe = _probe(np.random.default_rng(6), 40, nan=True)
    folded = TreeShap(ensemble)
    expected = folded.explain(probe)
    assert folded.folded and all(group.table is not None for group in folded.groups)
    shares = sum(g.zero.shape[0] * 2**g.d * g.d * 8 for g in folded.groups)
    monkeypatch.setattr(explain, "TABLE_BYTES", shares)  # the shares fit, three classes' values do not
    unfolded = TreeShap(ensemble)
    found = unfolded.explain(probe)
    assert not unfolded.folded and all(group.table is not None for group in unfolded.groups)
    np.testing.assert_allclose(found.values, expected.values, rtol=1e-12, atol=1e-15)
    assert_additive(found)


@pytest.mark.parametrize("name", ["decision-tree-regressor-nan", "random-forest-classifier", "gb-3class"])
def test_tree_shap_equals_the_shapley_sum_over_every_subset(sklearn_models: dict[str, Any], name: str) -> None:
    """The definition itself: the tree's path-dependent expectation given a subset of known features
    (Lundberg et al., Algorithm 1), weighed over all 2^N subsets."""
    model = sklearn_models[name]
    ensemble = from_sklearn(model)
    probe = _probe(np.random.default_rng(2), 6, nan=name.endswith("-nan"))
    found = TreeShap(ensemble).explain(probe)
    for row in range(probe.shape[0]):
        brute = _brute_force(ensemble, probe[row])
        assert_close(found.values[row], brute)
    assert_additive(found)


def _brute_force(ensemble: TreeEnsemble, x: np.ndarray, players: np.ndarray | None = None) -> np.ndarray:
    """Shapley values of the path-dependent game, by definition; ``players`` [columns]: each column's player
    (knowing a player is knowing all its columns), else one player per column."""
    compact = x[ensemble.features_used][None, :]
    player = np.arange(x.size) if players is None else np.asarray(players)
    cover = np.asarray(ensemble.cover)
    width = ensemble.leaf_value.shape[1]

    def expectation(node: int, known: frozenset[int]) -> np.ndarray:
        left, right = ensemble.children[node]
        if left == node:
            return np.asarray(ensemble.leaf_value[node], dtype=np.float64)
        column = int(player[ensemble.features_used[ensemble.feature[node]]])
        if column in known:
            goes_right = bool(ensemble.go_right(compact, np.asarray([node]))[0, 0])
            return expectation(int(right if goes_right else left), known)
        weighed = cover[left] * expectation(int(left), known) + cover[right] * expectation(int(right), known)
        mean: np.ndarray = weighed / cover[node]
        return mean

    def value(known: frozenset[int]) -> np.ndarray:
        total = np.zeros(ensemble.n_outputs)
        for tree, root in enumerate(ensemble.roots):
            if width == 1:
                total[ensemble.tree_column[tree]] += expectation(int(root), known)[0]
            else:
                total += expectation(int(root), known)
        return total

    n = int(player.max()) + 1
    phi = np.zeros((ensemble.n_outputs, n))
    cache = {s: value(frozenset(s)) for r in range(n + 1) for s in itertools.combinations(range(n), r)}
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for r in range(n):
            weight = math.factorial(r) * math.factorial(n - r - 1) / math.factorial(n)
            for subset in itertools.combinations(others, r):
                phi[:, i] += weight * (cache[tuple(sorted((*subset, i)))] - cache[subset])
    if ensemble.average:
        phi /= ensemble.roots.size // (ensemble.n_outputs if width != ensemble.n_outputs else 1)
    return phi


def test_an_ensemble_without_covers_is_not_explainable() -> None:
    """A bundle built before covers were stored still predicts; its explanation says to rebuild."""
    ensemble = from_sklearn(DecisionTreeRegressor(max_depth=3).fit(_X, _Y))
    old = TreeEnsemble.from_arrays({name: ensemble.arrays()[name] for name in ARRAY_NAMES}, ensemble.params())
    assert old.cover is None
    np.testing.assert_array_equal(old.predict_raw(_X[:10]), ensemble.predict_raw(_X[:10]))
    with pytest.raises(NotExplainable, match="rebuild"):
        TreeShap(old)


# -- built bundles: the compiled runtime's explain --------------------------------------------------------
FEATURES = [f"f{i}" for i in range(N)]


def test_a_built_bundle_lists_and_hashes_the_covers_and_explains(tmp_path: Path) -> None:
    model = lightgbm.LGBMClassifier(n_estimators=20, num_leaves=7, verbose=-1).fit(_XNAN, _Y3)
    path = ferry.build(model, "lgbm", tmp_path, features=FEATURES)
    manifest = yaml.safe_load((path / "ferry.yaml").read_text())
    assert "compiled-trees-cover.npy" in manifest["artifacts"]
    assert manifest["options"]["compiled"]["steps"][0]["arrays"]["cover"] == "compiled-trees-cover.npy"
    runtime = load_bundle(path).runtime
    assert isinstance(runtime, CompiledRuntime)
    assert runtime.explanation() == {"method": "tree_shap", "link": "softmax"}
    probe = _probe(np.random.default_rng(3), 40)
    found = runtime.explain(probe)
    assert found.features == FEATURES and found.outputs is not None and len(found.outputs) == 3
    reference = np.asarray(model.booster_.predict(probe, pred_contrib=True)).reshape(40, 3, N + 1)
    assert_close(found.contributions, reference[:, :, :N])


def test_linear_contributions_are_coefficient_times_distance_from_the_training_mean(tmp_path: Path) -> None:
    x = _X * [1.0, 10.0, 0.1, 3.0, 1.0] + [0.0, 5.0, -2.0, 0.0, 1.0]
    pipeline = make_pipeline(StandardScaler(), LogisticRegression()).fit(x, _Y3)
    runtime = load_bundle(ferry.build(pipeline, "logistic", tmp_path, features=FEATURES)).runtime
    assert isinstance(runtime, CompiledRuntime)
    assert runtime.explanation() == {"method": "linear", "link": "softmax"}
    probe = x[:20]
    found = runtime.explain(probe)
    scaler, logistic = pipeline[0], pipeline[1]
    expected = (probe - scaler.mean_)[:, None, :] * (logistic.coef_ / scaler.scale_)[None, :, :]
    np.testing.assert_allclose(found.contributions, expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(found.expected_value, logistic.intercept_, rtol=1e-12)
    np.testing.assert_allclose(found.score, pipeline.decision_function(probe), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(found.contributions.sum(axis=2) + found.expected_value, found.score, rtol=1e-9)


def test_a_linear_model_without_its_training_mean_says_so_and_with_training_data_explains(tmp_path: Path) -> None:
    model = LinearRegression().fit(_X, _Y)
    bare = load_bundle(ferry.build(model, "bare", tmp_path, features=FEATURES)).runtime
    assert isinstance(bare, CompiledRuntime)
    assert "training mean" in bare.explanation()["unavailable"]
    with pytest.raises(NotExplainable, match="StandardScaler"):
        bare.explain(_X[:2])
    stats = load_bundle(ferry.build(model, "stats", tmp_path, features=FEATURES, training_data=_X)).runtime
    assert isinstance(stats, CompiledRuntime)
    assert stats.explanation() == {"method": "linear", "link": "identity"}
    found = stats.explain(_X[:10])
    np.testing.assert_allclose(found.contributions[:, 0, :], (_X[:10] - _X.mean(axis=0)) * model.coef_, rtol=1e-9)
    np.testing.assert_allclose(found.score[:, 0], model.predict(_X[:10]), rtol=1e-9)


def test_trees_after_a_scaler_explain_the_input_columns(tmp_path: Path) -> None:
    shap = pytest.importorskip("shap")
    pipeline = make_pipeline(StandardScaler(), GradientBoostingClassifier(n_estimators=15, random_state=0))
    pipeline.fit(_X * 7 + 3, _Y > 0)
    runtime = load_bundle(ferry.build(pipeline, "gb", tmp_path, features=FEATURES)).runtime
    assert isinstance(runtime, CompiledRuntime)
    assert runtime.explanation() == {"method": "tree_shap", "link": "logit"}
    probe = _X[:30] * 7 + 3
    found = runtime.explain(probe)
    assert found.positive is not None and found.outputs is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = shap.TreeExplainer(pipeline[1]).shap_values(pipeline[0].transform(probe))
    assert_close(found.contributions[:, 0, :], np.asarray(reference))
