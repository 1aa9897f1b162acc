"""At build: turn a fitted model into its compiled form (``ferry.runtimes.compiled``) and prove it equal.

The compiled form is written only after it has given the original's answers on the sample and on
generated inputs: random rows, rows on and beside every split threshold, and (for text) random
strings. Labels and tree scores must be identical; a linear model's numbers may differ by BLAS rounding
(1e-9 relative), and probabilities after exp/sigmoid/softmax by 1e-9 relative. Anything else is not
compiled, and the bundle serves its original artifact.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ferry.runtimes.compiled import FORMAT, Program
from ferry.runtimes.fastpath import LINEAR_CLASSIFIERS, LINEAR_REGRESSORS  # the models both paths compile
from ferry.runtimes.trees import (
    SKLEARN_TREE_MODELS,
    TreeEnsemble,
    Unsupported,
    from_catboost,
    from_lightgbm,
    from_sklearn,
    from_xgboost,
)

logger = logging.getLogger("ferry.compile")

PREFIX = "compiled-"


class _Writer:
    """Saves arrays into the bundle folder under stable names and remembers them for the spec."""

    def __init__(self, staging: Path) -> None:
        self.staging = staging
        self.arrays: dict[str, np.ndarray] = {}

    def __call__(self, name: str, array: Any) -> str:
        array = np.asarray(array)
        if array.dtype.kind == "O":
            raise Unsupported(f"{name}: object arrays cannot be stored without pickle")
        filename = f"{PREFIX}{name}.npy"
        self.arrays[filename] = np.ascontiguousarray(array)
        return filename

    def read(self, filename: str) -> np.ndarray:
        return self.arrays[filename]

    def save(self) -> None:
        for filename, array in self.arrays.items():
            np.save(self.staging / filename, array, allow_pickle=False)


COMPILED = "yes: numpy arrays, verified equal to the original"


def compile_model(model: Any, runtime: str, staging: Path, options: dict[str, Any], labels: list[str] | None) -> str:
    """Write the verified compiled form of ``model`` into ``staging`` and ``options['compiled']``.

    Returns the outcome as the manifest's ``metadata.compiled`` says it: ``COMPILED``, or ``no: why``
    (and then nothing is written).
    """
    write = _Writer(staging)
    try:
        if runtime == "lightgbm":
            spec, check = _lightgbm(model, write, options, labels)
        elif runtime == "sklearn":
            spec, check = _sklearn(model, write)
        elif runtime == "xgboost":
            spec, check = _xgboost(model, write, labels)
        elif runtime == "catboost":
            spec, check = _catboost(model, write, labels)
        else:
            return f"no: the {runtime} runtime has no compiled form"
        program = Program(spec, write.read)
        check(program)
    except (Unsupported, AttributeError, TypeError, ValueError, IndexError) as exc:
        # a library's error may carry its whole native trace: its first line says why
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        logger.info("%s: not compiled (%s); the original artifact serves", type(model).__name__, reason)
        return f"no: {reason}"
    write.save()
    options["compiled"] = spec
    return COMPILED


Check = Callable[[Program], None]


# -- scikit-learn -------------------------------------------------------------------------------------
def _sklearn(model: Any, write: _Writer) -> tuple[dict[str, Any], Check]:
    steps = model.steps if type(model).__name__ == "Pipeline" else [("model", model)]
    program: list[dict[str, Any]] = []
    for index, (_, step) in enumerate(steps[:-1]):
        if type(step).__name__ != "StandardScaler":
            raise Unsupported(f"pipeline step {type(step).__name__}")
        program.append(_scaler(step, write, index))
    final = steps[-1][1]
    name = type(final).__name__
    head: dict[str, Any]
    if name in LINEAR_REGRESSORS:
        program.append(_linear(final, write))
        head = {"decision": "value"}
    elif name in LINEAR_CLASSIFIERS:
        program.append(_linear(final, write))
        multiclass = np.asarray(final.coef_).shape[0] > 1
        head = {"decision": "argmax" if multiclass else "sign", "classes": write("classes", final.classes_)}
        if name == "LogisticRegression":
            head["transform"] = "softmax" if multiclass else "logistic"
    elif name in SKLEARN_TREE_MODELS:
        ensemble = from_sklearn(final)
        program.append(_trees(ensemble, write))
        head = _tree_head(final, write)
    else:
        raise Unsupported(f"{name} has no compiled form")
    spec = {"format": FORMAT, "steps": program, "head": head}
    exact = name in SKLEARN_TREE_MODELS
    return spec, lambda compiled: _check_sklearn(model, compiled, _probe_rows(model, program, write), exact)


def _scaler(step: Any, write: _Writer, index: int) -> dict[str, Any]:
    spec: dict[str, Any] = {"op": "standardize"}
    if step.with_mean:
        spec["mean"] = write(f"{index}-mean", np.asarray(step.mean_, dtype=np.float64))
    if step.with_std:
        spec["scale"] = write(f"{index}-scale", np.asarray(step.scale_, dtype=np.float64))
    return spec


def _linear(model: Any, write: _Writer) -> dict[str, Any]:
    return {
        "op": "linear",
        "coef": write("coef", np.asarray(model.coef_, dtype=np.float64)),
        "intercept": write("intercept", np.asarray(model.intercept_, dtype=np.float64)),
    }


def _trees(ensemble: TreeEnsemble, write: _Writer) -> dict[str, Any]:
    arrays = {name: write(f"trees-{name}", array) for name, array in ensemble.arrays().items()}
    return {"op": "trees", "arrays": arrays, "params": ensemble.params()}


def _tree_head(model: Any, write: _Writer) -> dict[str, Any]:
    if not hasattr(model, "classes_"):
        return {"decision": "value"}
    classes = write("classes", model.classes_)
    if type(model).__name__ == "GradientBoostingClassifier":
        binary = len(model.classes_) == 2
        return {
            "decision": "sign_ge" if binary else "argmax",
            "transform": "logistic" if binary else "softmax",
            "classes": classes,
        }
    return {"decision": "argmax", "transform": "probabilities", "classes": classes}


def _probe_rows(model: Any, program: list[dict[str, Any]], write: _Writer) -> np.ndarray:
    """Random rows, plus rows on and either side of every split threshold (in input units)."""
    width = int(model.n_features_in_)
    rng = np.random.default_rng(0)
    rows = [rng.normal(scale=3.0, size=(512, width)), np.zeros((1, width))]
    trees = next((s for s in program if s["op"] == "trees"), None)
    if trees is not None:
        rows.append(_threshold_rows(write, trees, width, rng, _unscale(program, write)))
    return np.vstack(rows)


def _unscale(program: list[dict[str, Any]], write: _Writer) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """Maps threshold values of a feature back through the scalers before the trees."""
    scalers = [s for s in program if s["op"] == "standardize"]

    def back(values: np.ndarray, feature: np.ndarray) -> np.ndarray:
        for spec in reversed(scalers):
            if spec.get("scale"):
                values = values * write.read(spec["scale"])[feature]
            if spec.get("mean"):
                values = values + write.read(spec["mean"])[feature]
        return values

    return back


def _threshold_rows(
    write: _Writer, trees: dict[str, Any], width: int, rng: np.random.Generator, back: Any, count: int = 512
) -> np.ndarray:
    arrays = trees["arrays"]
    feature = write.read(arrays["feature"])
    threshold = write.read(arrays["threshold"])
    inner = np.isfinite(threshold)
    used = write.read(arrays["features_used"])
    rows = rng.normal(scale=3.0, size=(count, width))
    if not inner.any():
        return rows
    picks = rng.integers(0, int(inner.sum()), size=(count, width))
    values = threshold[inner][picks]
    columns = used[feature[inner][picks]]
    nudged = np.where(rng.random(values.shape) < 0.5, np.nextafter(values, np.inf), values)
    nudged = np.where(rng.random(values.shape) < 0.3, np.nextafter(values, -np.inf), nudged)
    rows[np.arange(count)[:, None], columns] = back(nudged, columns)
    return rows


def _both_paths(scores: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> np.ndarray:
    """Scores of the whole batch, checked equal to those of small batches (trees walk those differently)."""
    whole = scores(x)
    small = np.concatenate([scores(x[i : i + 16]) for i in range(0, x.shape[0], 16)])
    _same(small, whole, True, "small-batch score")
    return whole


def _check_sklearn(model: Any, compiled: Program, x: np.ndarray, exact: bool) -> None:
    if compiled.trees is not None:  # (a matrix product may round differently by batch size; trees may not)
        _both_paths(compiled.scores, x)
    values, proba = compiled.outputs(x)
    expected = np.asarray(model.predict(x))
    classes = compiled.classes
    if classes is not None:
        if not np.array_equal(np.asarray(classes)[values], expected):
            raise Unsupported("compiled labels differ from predict()")
    else:
        _same(values.reshape(expected.shape), expected, exact, "predict()")
    if classes is not None and hasattr(model, "predict_proba"):
        if proba is None:
            raise Unsupported("the original has predict_proba and the compiled form has none")
        reference = np.asarray(model.predict_proba(x))
        _same(proba, reference, exact and compiled.transform == "probabilities", "predict_proba()")


def _same(actual: np.ndarray, expected: np.ndarray, exact: bool, what: str) -> None:
    equal = np.array_equal(actual, expected) if exact else np.allclose(actual, expected, rtol=1e-9, atol=1e-12)
    if not equal:
        worst = float(np.max(np.abs(np.asarray(actual, dtype=float) - np.asarray(expected, dtype=float))))
        raise Unsupported(f"compiled {what} differs from the original (max |diff| {worst:.3g})")


# -- LightGBM ------------------------------------------------------------------------------------------
def _lightgbm(
    model: Any, write: _Writer, options: dict[str, Any], labels: list[str] | None
) -> tuple[dict[str, Any], Check]:
    booster = getattr(model, "booster_", model)
    ensemble, head = from_lightgbm(booster.dump_model())
    head["decision"] = "proba_argmax" if labels else "value"
    spec: dict[str, Any] = {"format": FORMAT, "steps": [_trees(ensemble, write)], "head": head}
    featurizer = options.get("featurizer")
    if featurizer:
        spec["text"] = {"featurizer": "options.featurizer"}

    def check(compiled: Program) -> None:
        _check_lightgbm_trees(booster, compiled, ensemble)
        if featurizer:
            _check_text(booster, compiled, featurizer)

    return spec, check


def _check_lightgbm_trees(booster: Any, compiled: Program, ensemble: TreeEnsemble) -> None:
    """Raw scores identical to ``Booster.predict(raw_score=True)``, incl. NaN, zeros and thresholds."""
    width = booster.num_feature()
    rng = np.random.default_rng(0)
    threshold = ensemble.threshold
    inner = np.isfinite(threshold)
    x = rng.normal(scale=3.0, size=(256, width))
    if inner.any():
        picks = rng.integers(0, int(inner.sum()), size=x.shape)
        columns = ensemble.features_used[ensemble.feature[inner][picks]]
        values = threshold[inner][picks]
        values = np.where(rng.random(values.shape) < 0.5, np.nextafter(values, np.inf), values)
        x[np.arange(x.shape[0])[:, None], columns] = values
    x[rng.random(x.shape) < 0.05] = np.nan
    x[rng.random(x.shape) < 0.05] = 0.0
    x[rng.random(x.shape) < 0.02] = 1e-36
    raw = np.asarray(booster.predict(x, raw_score=True)).reshape(x.shape[0], -1)
    _same(_both_paths(compiled.scores, x), raw, True, "raw score")
    values_, proba = compiled.head(raw)
    reference = np.asarray(booster.predict(x))
    mine = proba if proba is not None else values_
    if compiled.transform == "sigmoid" and mine.ndim == 2:
        mine = mine[:, 1]
    _same(mine.reshape(reference.shape), reference, compiled.transform == "identity", "prediction")


def _check_text(booster: Any, compiled: Program, featurizer: dict[str, Any]) -> None:
    """The numpy featurizer gives scikit-learn's HashingVectorizer values exactly, on varied text."""
    from ferry.runtimes.lightgbm import make_featurizer
    from ferry.runtimes.textfeatures import HashedCharNgrams

    assert compiled.trees is not None
    texts = _probe_texts()
    mine = HashedCharNgrams(featurizer, compiled.trees.ensemble.features_used).transform(texts)
    reference = make_featurizer(featurizer).transform(texts)
    _same(mine, reference[:, compiled.trees.ensemble.features_used].toarray(), True, "text features")
    full = HashedCharNgrams(featurizer, np.arange(int(featurizer.get("n_features", 2**14))))
    _same(full.transform(texts), reference.toarray(), True, "text features (all columns)")
    _same(
        compiled.scores_compact(mine),
        np.asarray(booster.predict(reference, raw_score=True)).reshape(len(texts), -1),
        True,
        "text raw score",
    )


def _probe_texts(count: int = 300) -> list[str]:
    rng = np.random.default_rng(0)
    alphabet = [*"abcxyzABCXYZ0123 \t\n.,!?ÀÉßǅ映画最高でしたもう一度観たいつまらない", "\u3000", "  ", "\r\n"]
    texts = ["", " ", "a", "最高の映画でした！もう一度観たいです。"]
    for _ in range(count):
        length = int(rng.integers(1, 80))
        texts.append("".join(alphabet[i] for i in rng.integers(0, len(alphabet), size=length)))
    return texts


# -- XGBoost and CatBoost -----------------------------------------------------------------------------
def _booster_rows(ensemble: TreeEnsemble, width: int) -> np.ndarray:
    """Random rows, rows on and beside every split threshold (in float32), NaN and zeros."""
    rng = np.random.default_rng(0)
    x = rng.normal(scale=3.0, size=(512, width))
    inner = np.isfinite(ensemble.threshold) & (ensemble.children[:, 0] != np.arange(ensemble.threshold.size))
    if inner.any():
        picks = rng.integers(0, int(inner.sum()), size=x.shape)
        columns = ensemble.features_used[ensemble.feature[inner][picks]]
        values = ensemble.threshold[inner][picks].astype(np.float32)
        step = rng.integers(-1, 2, size=values.shape)  # the threshold itself, or the float32 either side
        values = np.where(step > 0, np.nextafter(values, np.float32(np.inf)), values)
        values = np.where(step < 0, np.nextafter(values, np.float32(-np.inf)), values)
        x[np.arange(x.shape[0])[:, None], columns] = values
    x[rng.random(x.shape) < 0.05] = np.nan
    x[rng.random(x.shape) < 0.05] = 0.0
    return x


def _booster_spec(ensemble: TreeEnsemble, head: dict[str, Any], write: _Writer) -> dict[str, Any]:
    return {"format": FORMAT, "steps": [_trees(ensemble, write)], "head": head}


def _xgboost(booster: Any, write: _Writer, labels: list[str] | None) -> tuple[dict[str, Any], Check]:
    """XGBoost: margins and answers identical to ``Booster.inplace_predict``, float32 for float32."""
    import json

    ensemble, head = from_xgboost(json.loads(booster.save_raw("json")))
    head["decision"] = "proba_argmax" if labels else "value"

    def check(compiled: Program) -> None:
        x = _booster_rows(ensemble, int(booster.num_features()))
        margin = np.asarray(booster.inplace_predict(x, predict_type="margin")).reshape(x.shape[0], -1)
        _same(_both_paths(compiled.scores, x), margin, True, "margin")
        values, proba = compiled.outputs(x)
        reference = np.asarray(booster.inplace_predict(x))
        if labels:
            reference = reference if reference.ndim == 2 else np.column_stack([1 - reference, reference])
            _same(np.asarray(proba), reference, True, "predict_proba()")
            _same(values, np.argmax(reference, axis=1), True, "predict()")
        else:
            _same(np.asarray(values).reshape(reference.shape), reference, True, "predict()")

    return _booster_spec(ensemble, head, write), check


def _catboost(model: Any, write: _Writer, labels: list[str] | None) -> tuple[dict[str, Any], Check]:
    """CatBoost: raw formula values, probabilities and classes identical to the model's own predict."""
    from ferry.bundle.boosters import catboost_json

    ensemble = from_catboost(catboost_json(model))
    head: dict[str, Any] = {"decision": "value"}
    if labels:
        binary = ensemble.n_outputs == 1
        head = {"decision": "sign" if binary else "argmax", "transform": "logistic" if binary else "softmax"}

    def check(compiled: Program) -> None:
        x = _booster_rows(ensemble, len(model.feature_names_))
        raw = np.asarray(model.predict(x, prediction_type="RawFormulaVal")).reshape(x.shape[0], -1)
        _same(_both_paths(compiled.scores, x), raw, True, "raw formula value")
        values, proba = compiled.outputs(x)
        if labels:
            _same(np.asarray(proba), np.asarray(model.predict(x, prediction_type="Probability")), True, "probability")
            position = {str(c): i for i, c in enumerate(model.classes_)}
            answered = np.asarray(model.predict(x, prediction_type="Class")).reshape(-1)
            _same(values, np.asarray([position[str(c)] for c in answered]), True, "class")
        else:
            reference = np.asarray(model.predict(x))
            _same(np.asarray(values).reshape(reference.shape), reference, True, "predict()")

    return _booster_spec(ensemble, head, write), check


def load_original(staging: Path, runtime: str, options: dict[str, Any], trusted: bool) -> Any:
    """The model as serving would load it from the artifact just written (what the check compares to), read
    with the builder's trust (``--trusted``) under the one loading policy, as the file it came from was."""
    if runtime == "lightgbm":
        from ferry.runtimes.lightgbm_check import read_booster

        return read_booster(staging / options.get("artifact", "model.txt"))
    if runtime == "xgboost":
        from ferry.bundle.boosters import load_xgboost

        name = "model.ubj" if (staging / "model.ubj").is_file() else "model.json"
        return load_xgboost(staging / name)
    if runtime == "catboost":
        from ferry.bundle.boosters import load_catboost

        return load_catboost(staging / "model.cbm")
    if runtime == "sklearn" and options.get("steps"):  # several files composed at build
        from sklearn.pipeline import make_pipeline

        single = {k: v for k, v in options.items() if k != "steps"}
        steps = [load_original(staging, runtime, {**single, "artifact": s}, trusted) for s in options["steps"]]
        return make_pipeline(*steps)
    if runtime == "sklearn":
        from ferry.bundle.trust import BUILD_FLAG, Trust, load_estimator

        name = options.get("artifact", "model.skops")
        return load_estimator(staging / name, Trust(trusted, BUILD_FLAG), name)  # skops or pickle, by content
    return None
