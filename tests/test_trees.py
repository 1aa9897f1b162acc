"""The numpy tree evaluator against the frameworks' own predictions, on both of its walks.

Batches go through QuickScorer (bitvectors over all splits at once), ``QUICKSCORER_ROWS`` rows at a
time; trees of over 64 leaves, level by level. Each test scores the same rows one at a time, in small
batches, whole, and level by level, so a divergence of either walk fails it. Rows are drawn where
splits are decided: values equal to a threshold and one ulp either side, NaN, +0 and -0, values
LightGBM reads as zero, infinities.
"""

from __future__ import annotations

from typing import Any

import lightgbm
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.ensemble import (
    ExtraTreesRegressor,
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

from ferry.runtimes import trees
from ferry.runtimes.trees import TreeEnsemble, from_lightgbm, from_sklearn

FINITE_SPECIAL = [0.0, -0.0, 1e-36, -1e-36, trees.LIGHTGBM_ZERO, -trees.LIGHTGBM_ZERO, 8e-36]
SPECIAL = [*FINITE_SPECIAL, np.inf, -np.inf]


def split_rows(
    ensemble: TreeEnsemble, width: int, rng: np.random.Generator, count: int, nan: bool, special: list[float] = SPECIAL
) -> np.ndarray:
    """Rows whose values sit on split thresholds, one ulp either side, and on LightGBM's zero rules."""
    x = rng.normal(scale=3.0, size=(count, width))
    inner = np.isfinite(ensemble.threshold)
    if inner.any():
        picks = rng.integers(0, int(inner.sum()), size=x.shape)
        columns = ensemble.features_used[ensemble.feature[inner][picks]]
        values = ensemble.threshold[inner][picks]
        nudge = rng.integers(-1, 2, size=values.shape)
        values = np.where(nudge > 0, np.nextafter(values, np.inf), values)
        values = np.where(nudge < 0, np.nextafter(values, -np.inf), values)
        if ensemble.float32_input:  # scikit-learn reads float32: land on both sides of the rounding too
            values = np.where(rng.random(values.shape) < 0.3, values.astype(np.float32).astype(np.float64), values)
        rows = np.arange(count)[:, None]
        x[rows, columns] = np.where(rng.random(values.shape) < 0.6, values, x[rows, columns])
    x[rng.random(x.shape) < 0.08] = rng.choice(special)
    if nan:
        x[rng.random(x.shape) < 0.1] = np.nan
    return x


def every_walk(ensemble: TreeEnsemble, x: np.ndarray) -> dict[str, np.ndarray]:
    """Scores of ``x`` row by row, in batches of 7 and whole, by each walk (and as the cost estimate picks)."""
    assert x.shape[0] > trees.QUICKSCORER_ROWS  # whole batches go through QuickScorer in chunks
    scores = {}
    for walk in ("quickscorer", "levels", None):
        trees.WALK = walk
        try:
            scores[f"{walk}, one row"] = np.concatenate([ensemble.predict_raw(x[i : i + 1]) for i in range(len(x))])
            scores[f"{walk}, batches of 7"] = np.concatenate(
                [ensemble.predict_raw(x[i : i + 7]) for i in range(0, len(x), 7)]
            )
            scores[f"{walk}, whole"] = ensemble.predict_raw(x)
        finally:
            trees.WALK = None
    return scores


def assert_every_walk_equals(ensemble: TreeEnsemble, x: np.ndarray, expected: np.ndarray) -> None:
    for walk, scores in every_walk(ensemble, x).items():
        np.testing.assert_array_equal(scores, expected.reshape(scores.shape), err_msg=walk)


# -- LightGBM ----------------------------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    objective=st.sampled_from(["regression", "binary", "multiclass", "poisson"]),
    missing=st.sampled_from(["nan", "zero", "none"]),
)
def test_lightgbm_raw_scores_are_its_own_on_every_walk(seed: int, objective: str, missing: str) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(300, 6))
    x[rng.random(x.shape) < 0.15] = 0.0
    if missing == "nan":
        x[rng.random(x.shape) < 0.15] = np.nan
    y = np.nan_to_num(x[:, 0]) + x[:, 1] * x[:, 2] + rng.normal(size=300)
    label = {
        "regression": y,
        "poisson": np.exp(y / 4),
        "binary": (y > 0).astype(int),
        "multiclass": np.digitize(y, [-0.5, 0.5]),
    }[objective]
    params: dict[str, Any] = {"objective": objective, "num_leaves": int(rng.integers(2, 64)), "verbose": -1}
    params.update({"zero": {"zero_as_missing": True}, "none": {"use_missing": False}, "nan": {}}[missing])
    if objective == "multiclass":
        params["num_class"] = 3
    booster = lightgbm.train(params, lightgbm.Dataset(x, label), num_boost_round=int(rng.integers(1, 25)))
    ensemble, _ = from_lightgbm(booster.dump_model())
    probe = split_rows(ensemble, 6, rng, 140, nan=True)
    assert_every_walk_equals(ensemble, probe, np.asarray(booster.predict(probe, raw_score=True)))


def _booster(x: np.ndarray, y: np.ndarray, **params: Any) -> Any:
    return lightgbm.train({"verbose": -1, "min_data_in_leaf": 2, **params}, lightgbm.Dataset(x, y), num_boost_round=8)


def test_lightgbm_trees_of_over_64_leaves_take_the_level_walk_and_stay_exact() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2000, 4))
    booster = _booster(x, x[:, 0] * 3 + np.sin(x[:, 1] * 4), num_leaves=200, min_data_in_leaf=1)
    ensemble, _ = from_lightgbm(booster.dump_model())
    assert trees._QuickScorer.of(ensemble) is None  # not representable in 64-bit words
    probe = split_rows(ensemble, 4, rng, 100, nan=True)
    assert_every_walk_equals(ensemble, probe, np.asarray(booster.predict(probe, raw_score=True)))


def test_lightgbm_leaf_only_trees_add_their_leaf() -> None:
    """A constant label grows trees without a split; a multiclass model mixes them with split trees."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(200, 3))
    constant = _booster(x, np.full(200, 2.5), objective="regression")
    label = np.where(x[:, 0] > 0, 1, 0)  # class 2 never occurs: its trees are single leaves
    mixed = _booster(x, label, objective="multiclass", num_class=3)
    for booster in (constant, mixed):
        ensemble, _ = from_lightgbm(booster.dump_model())
        probe = split_rows(ensemble, 3, rng, 70, nan=True)
        assert_every_walk_equals(ensemble, probe, np.asarray(booster.predict(probe, raw_score=True)))


def test_lightgbm_reads_tiny_values_as_zero_when_a_threshold_lies_among_them() -> None:
    """A threshold inside [-1e-35, 1e-35) (possible in a model file) makes LightGBM's zero clamp matter."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 2))
    booster = _booster(x, x[:, 0] + x[:, 1], objective="regression", num_leaves=4)
    text = booster.model_to_string()
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("threshold="))
    values = lines[first].split("=")[1].split()
    tiny = f"{5e-36:.{len(values[0]) - 6}e}"  # as long as the threshold it replaces: tree_sizes= stays true
    assert len(tiny) == len(values[0])
    lines[first] = "threshold=" + " ".join([tiny, *values[1:]])
    edited = lightgbm.Booster(model_str="\n".join(lines) + "\n")
    ensemble, _ = from_lightgbm(edited.dump_model())
    assert ensemble._clamp
    near_zero = np.asarray([8e-36, -8e-36, 1e-36, 4e-36, 6e-36, 0.0, -0.0])
    probe = np.repeat(np.stack(np.meshgrid(near_zero, near_zero), axis=-1).reshape(-1, 2), 2, axis=0)  # 98 rows
    assert_every_walk_equals(ensemble, probe, np.asarray(edited.predict(probe, raw_score=True)))


# -- scikit-learn -------------------------------------------------------------------------------------
_rng = np.random.default_rng(4)
_X = _rng.normal(size=(400, 5)) * [1.0, 100.0, 0.01, 3.0, 1.0]
_Y = _X[:, 0] + _X[:, 1] / 100 + np.sin(_X[:, 3]) + _rng.normal(scale=0.2, size=400)
_Y3 = np.digitize(_Y, [-0.7, 0.7])
_XNAN = np.where(_rng.random(_X.shape) < 0.1, np.nan, _X)

SKLEARN: dict[str, tuple[Any, str, bool]] = {  # model, method whose output the raw scores are, NaN in training
    "decision-tree-3class": (DecisionTreeClassifier(max_depth=8, random_state=0).fit(_X, _Y3), "predict_proba", False),
    "decision-tree-nan": (DecisionTreeRegressor(max_depth=6, random_state=0).fit(_XNAN, _Y), "predict", True),
    "forest-3class": (RandomForestClassifier(n_estimators=30, random_state=0).fit(_X, _Y3), "predict_proba", False),
    "forest-nan": (RandomForestRegressor(n_estimators=10, random_state=0).fit(_XNAN, _Y), "predict", True),
    "extra-trees": (ExtraTreesRegressor(n_estimators=10, random_state=0).fit(_X, _Y), "predict", False),
    "gb-3class": (GradientBoostingClassifier(n_estimators=15, random_state=0).fit(_X, _Y3), "decision_function", False),
    "gb-regressor": (GradientBoostingRegressor(n_estimators=40, random_state=0).fit(_X, _Y), "predict", False),
}


@pytest.mark.parametrize("name", list(SKLEARN))
@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_sklearn_scores_are_its_own_on_every_walk(name: str, seed: int) -> None:
    model, method, nan = SKLEARN[name]
    ensemble = from_sklearn(model)
    # (scikit-learn refuses infinities)
    probe = split_rows(ensemble, 5, np.random.default_rng(seed), 80, nan=nan, special=FINITE_SPECIAL)
    expected = np.asarray(getattr(model, method)(probe), dtype=np.float64)
    assert_every_walk_equals(ensemble, probe, expected)


# -- the exit leaf -------------------------------------------------------------------------------------
def test_both_lowest_clear_bit_counts_agree_on_every_position() -> None:
    """numpy 2's bitwise_count and numpy 1's frexp route give the same exit leaf for all 64 positions."""
    rng = np.random.default_rng(5)
    upper = rng.integers(0, 2**63, size=(64, 50), dtype=np.uint64) * np.uint64(2)  # any bits above the zero
    words = np.asarray(
        [(upper[k] << np.uint64(k)) | np.uint64((1 << k) - 1) for k in range(64)], dtype=np.uint64
    )  # k trailing ones, then a zero
    expected = np.repeat(np.arange(1, 65), 50).reshape(64, 50)
    np.testing.assert_array_equal(trees._exit_bit_frexp(words), expected)
    if hasattr(np, "bitwise_count"):
        np.testing.assert_array_equal(trees._exit_bit_counted(words), expected)
