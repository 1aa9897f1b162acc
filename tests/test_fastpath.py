"""The compiled fast path gives exactly the original model's answers (property test over random inputs)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.linear_model import LinearRegression, LogisticRegression, Perceptron, Ridge, SGDClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

from ferry.runtimes.fastpath import compile_estimator

N_FEATURES = 3
_rng = np.random.default_rng(7)
_X = _rng.normal(size=(120, N_FEATURES)) * [1.0, 10.0, 0.1] + [0.0, 5.0, -1.0]
_Y3 = (_X[:, 0] + _X[:, 1] / 10 > 0.5).astype(int) + (_X[:, 2] > -1).astype(int)
_Y2 = (_X[:, 0] > 0).astype(int)
_YR = _X @ [1.5, -0.2, 3.0] + 0.7

MODELS: dict[str, Any] = {
    "perceptron-pipeline-3class": make_pipeline(StandardScaler(), Perceptron(random_state=0)).fit(_X, _Y3),
    "logistic-3class": LogisticRegression(max_iter=1000).fit(_X, _Y3),
    "logistic-binary-pipeline": make_pipeline(StandardScaler(), LogisticRegression()).fit(_X, _Y2),
    "sgd-binary-string-labels": SGDClassifier(random_state=0).fit(_X, np.where(_Y2 == 1, "yes", "no")),
    "linear-regression": LinearRegression().fit(_X, _YR),
    "ridge-pipeline": make_pipeline(StandardScaler(with_mean=False), Ridge()).fit(_X, _YR),
}

rows = arrays(
    np.float64,
    st.tuples(st.integers(1, 40), st.just(N_FEATURES)),
    elements=st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False),
)


@pytest.mark.parametrize("name", list(MODELS))
@settings(max_examples=60, deadline=None)
@given(x=rows)
def test_compiled_model_matches_predict_and_predict_proba(name: str, x: np.ndarray) -> None:
    model = MODELS[name]
    compiled = compile_estimator(model, N_FEATURES)
    assert compiled is not None
    expected = model.predict(x)
    if hasattr(model, "classes_"):
        np.testing.assert_array_equal(compiled.predict(x), expected)
    else:
        np.testing.assert_allclose(compiled.predict(x), expected, rtol=1e-9, atol=1e-9)
    if hasattr(model, "predict_proba"):
        assert compiled.predict_proba is not None
        np.testing.assert_allclose(compiled.predict_proba(x), model.predict_proba(x), rtol=1e-7, atol=1e-9)


def test_unknown_models_keep_the_framework_predict() -> None:
    tree = DecisionTreeClassifier().fit(_X, _Y3)
    assert compile_estimator(tree, N_FEATURES) is None
