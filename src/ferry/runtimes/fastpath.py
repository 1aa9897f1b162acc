"""Compile simple fitted scikit-learn models into lean numpy predictors.

scikit-learn's ``predict`` spends ~300 µs per call validating its input whatever the row count;
the same math in numpy costs a few µs. Known types (StandardScaler, linear models, and Pipelines
of them) compile into a chain of numpy steps. A compiled predictor is used only after it has
given exactly the original's answers on random inputs at load; anything else keeps the
framework's own ``predict``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import expit, softmax

logger = logging.getLogger("ferry.fastpath")

Transform = Callable[[np.ndarray], np.ndarray]

LINEAR_REGRESSORS = {
    "LinearRegression",
    "Ridge",
    "Lasso",
    "ElasticNet",
    "SGDRegressor",
    "BayesianRidge",
    "HuberRegressor",
}
LINEAR_CLASSIFIERS = {
    "Perceptron",
    "LogisticRegression",
    "SGDClassifier",
    "RidgeClassifier",
    "LinearSVC",
    "PassiveAggressiveClassifier",
}


@dataclass
class CompiledModel:
    predict: Callable[[np.ndarray], np.ndarray]
    predict_proba: Callable[[np.ndarray], np.ndarray] | None


def compile_estimator(estimator: Any, n_features: int) -> CompiledModel | None:
    """A verified numpy predictor for ``estimator``, or ``None`` when it is not a known simple type."""
    try:
        compiled = _compile(estimator)
    except (AttributeError, ValueError, TypeError):
        return None
    if compiled is None:
        return None
    return _verified(compiled, estimator, n_features)


def _compile(estimator: Any) -> CompiledModel | None:
    steps = estimator.steps if type(estimator).__name__ == "Pipeline" else [("model", estimator)]
    transforms: list[Transform] = []
    for _, step in steps[:-1]:
        transform = _transform(step)
        if transform is None:
            return None
        transforms.append(transform)
    final = steps[-1][1]
    head = _chain(transforms)
    name = type(final).__name__
    if name == "StandardScaler":
        return None
    if name in LINEAR_REGRESSORS:
        coef, intercept = np.asarray(final.coef_, dtype=np.float64), np.asarray(final.intercept_, dtype=np.float64)
        return CompiledModel(predict=lambda x: head(x) @ coef.T + intercept, predict_proba=None)
    if name in LINEAR_CLASSIFIERS:
        return _linear_classifier(final, head)
    return None


def _transform(step: Any) -> Transform | None:
    if type(step).__name__ != "StandardScaler":
        return None
    mean = step.mean_ if step.with_mean else None
    scale = step.scale_ if step.with_std else None

    def scale_rows(x: np.ndarray) -> np.ndarray:
        out = np.array(x, dtype=np.float64)  # a copy, as StandardScaler makes
        if mean is not None:
            out -= mean
        if scale is not None:
            out /= scale
        return out

    return scale_rows


def _chain(transforms: list[Transform]) -> Transform:
    def run(x: np.ndarray) -> np.ndarray:
        for transform in transforms:
            x = transform(x)
        return x

    return run


def _linear_classifier(model: Any, head: Transform) -> CompiledModel:
    coef = np.asarray(model.coef_, dtype=np.float64)
    intercept = np.asarray(model.intercept_, dtype=np.float64)
    classes = np.asarray(model.classes_)

    def decision(x: np.ndarray) -> np.ndarray:
        scores: np.ndarray = head(x) @ coef.T + intercept
        return scores[:, 0] if scores.shape[1] == 1 else scores

    def predict(x: np.ndarray) -> np.ndarray:
        scores = decision(x)
        indices = (scores > 0).astype(int) if scores.ndim == 1 else scores.argmax(axis=1)
        labels: np.ndarray = classes[indices]
        return labels

    proba = None
    if type(model).__name__ == "LogisticRegression":

        def proba(x: np.ndarray) -> np.ndarray:
            scores = decision(x)
            if scores.ndim == 1:
                positive: np.ndarray = expit(scores)
                return np.column_stack([1.0 - positive, positive])
            result: np.ndarray = softmax(scores, axis=1)
            return result

    return CompiledModel(predict=predict, predict_proba=proba)


def _verified(compiled: CompiledModel, estimator: Any, n_features: int) -> CompiledModel | None:
    """Keep the compiled predictor only where it matches the original on random inputs."""
    rng = np.random.default_rng(0)
    x = rng.normal(scale=3.0, size=(512, n_features))
    expected = np.asarray(estimator.predict(x))
    actual = compiled.predict(x)
    same = (
        np.array_equal(actual, expected)
        if expected.dtype.kind in "OUSb" or hasattr(estimator, "classes_")
        else (np.allclose(actual, expected, rtol=1e-9, atol=1e-9))
    )
    if not same:
        logger.info("fast path for %s does not match its predict(); using the original", type(estimator).__name__)
        return None
    if compiled.predict_proba is not None and not np.allclose(
        compiled.predict_proba(x), estimator.predict_proba(x), rtol=1e-7, atol=1e-9
    ):
        compiled.predict_proba = None
    return compiled
