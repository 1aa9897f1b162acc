"""Serve a bundle's compiled form: plain ``.npy`` arrays and a short program, numpy only.

A build whose model compiles (scalers, linear models, tree ensembles, LightGBM, and pipelines of them)
writes the arrays next to the original artifact, lists and hashes them like any artifact, and records
the program in ``options.compiled``. Serving that form imports neither scikit-learn, scipy, skops nor
LightGBM: ready sooner, less memory, and the arrays are memory-mapped, so forked workers share them.

Program (``options.compiled``)::

    format: 1
    steps:            # applied in order to the [rows, features] float64 batch
      - {op: standardize, mean: FILE?, scale: FILE?}
      - {op: linear, coef: FILE, intercept: FILE}
      - {op: trees, arrays: {NAME: FILE, ...}, params: {...}}     # see ferry.runtimes.trees
    text: {featurizer: options.featurizer}                          # text bundles: hashed n-grams first
    head: {transform: identity|exp|sigmoid|softmax|logistic|probabilities,
           decision: value|sign|sign_ge|argmax, classes: FILE?, sigmoid: 1.0}
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ferry.bundle.manifest import Manifest
from ferry.errors import BundleError
from ferry.runtimes.base import Prediction, Runtime, class_labels, label_values
from ferry.runtimes.explain import Explanation, NotExplainable, ProgramExplainer
from ferry.runtimes.float32links import FLOAT32_LINKS
from ferry.runtimes.trees import TreeEnsemble

FORMAT = 1
Step = Any  # a callable [rows, n] -> [rows, m]


def load_array(bundle_dir: Path, name: str, artifacts: dict[str, str]) -> np.ndarray:
    """A listed ``.npy`` artifact, memory-mapped read-only; object arrays (pickles) are refused."""
    if name not in artifacts or "/" in name or name.startswith("."):
        raise BundleError(f"compiled array '{name}' is not a listed artifact of the bundle")
    try:
        array: np.ndarray = np.load(bundle_dir / name, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise BundleError(f"{name}: not a plain numpy array: {exc}") from None
    return array


class Program:
    """The compiled steps and head of one bundle, built from arrays by name."""

    def __init__(self, spec: dict[str, Any], array: Any) -> None:
        if spec.get("format") != FORMAT:
            raise BundleError(f"compiled form format {spec.get('format')!r} is not {FORMAT}; rebuild the bundle")
        self.steps = [_step(s, array) for s in spec.get("steps", [])]
        self.trees = next((s for s in self.steps if isinstance(s, _Trees)), None)
        head = spec.get("head", {})
        self.transform = str(head.get("transform", "identity"))
        self.decision = str(head.get("decision", "value"))
        self.sigmoid = float(head.get("sigmoid", 1.0))
        self.classes = array(head["classes"]) if head.get("classes") else None

    def scores(self, x: np.ndarray) -> np.ndarray:
        for step in self.steps:
            x = step(x)
        return x

    def scores_compact(self, x: np.ndarray) -> np.ndarray:
        """Scores of a trees-only program for rows of just the columns the trees read (text bundles)."""
        assert self.trees is not None and len(self.steps) == 1
        return self.trees.ensemble.predict_compact(x)

    def outputs(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        return self.head(self.scores(x))

    def head(self, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(values, probabilities): values are class indices for classifiers, numbers otherwise."""
        proba = _transformed(scores, self.transform, self.sigmoid)
        if self.decision == "value":
            values = proba if proba is not None else scores
            return (values[:, 0] if values.ndim == 2 and values.shape[1] == 1 else values), None
        if self.decision in ("sign", "sign_ge"):
            flat = scores[:, 0] if scores.ndim == 2 else scores
            index = (flat >= 0) if self.decision == "sign_ge" else (flat > 0)
            return index.astype(np.int64), proba
        if self.decision == "proba_argmax" and proba is not None:  # LightGBM classifiers: [1 - p, p] for binary
            proba = proba if proba.ndim == 2 else np.column_stack([1.0 - proba, proba])
            return np.argmax(proba, axis=1), proba
        return np.argmax(scores, axis=1), proba


def _transformed(scores: np.ndarray, transform: str, sigmoid: float) -> np.ndarray | None:
    """The link function, computed as the libraries compute it, bit for bit on every CPU.

    LightGBM's objectives and scikit-learn's losses (and scipy's ``expit``) call the C library's ``exp``
    once per value and sum a softmax row left to right. numpy's vectorised ``exp`` rounds the last bit
    differently on CPUs with AVX-512 (1 ulp on ~5% of values), so it is not used here.
    """
    if transform == "identity":
        return None
    if transform in FLOAT32_LINKS:  # XGBoost's, in float32 (ferry.runtimes.float32links)
        return FLOAT32_LINKS[transform](scores)
    if transform == "exp":
        return libm_exp(scores)
    if transform == "probabilities":
        return scores
    if transform in ("sigmoid", "logistic"):
        flat = scores[:, 0] if scores.ndim == 2 else scores
        positive: np.ndarray = 1.0 / (1.0 + libm_exp(-sigmoid * flat))
        # LightGBM's binary objective answers p alone; scikit-learn's predict_proba [1 - p, p].
        return positive if transform == "sigmoid" else np.column_stack([1.0 - positive, positive])
    if transform == "softmax":
        shifted = libm_exp(scores - scores.max(axis=1, keepdims=True))
        total = shifted[:, 0].copy()
        for column in range(1, shifted.shape[1]):  # left to right, as LightGBM's Softmax and sklearn's loss
            total += shifted[:, column]
        result: np.ndarray = shifted / total[:, None]
        return result
    raise BundleError(f"unknown compiled transform {transform!r}")


def _exp_or_inf(value: float) -> float:
    try:
        return math.exp(value)
    except OverflowError:  # C's exp answers inf where Python raises
        return math.inf


def libm_exp(values: np.ndarray) -> np.ndarray:
    """``exp`` of every value through the C library, as LightGBM's ``std::exp`` computes it."""
    flat = np.asarray(values, dtype=np.float64).ravel().tolist()
    try:
        out = np.fromiter(map(math.exp, flat), dtype=np.float64, count=len(flat))
    except OverflowError:
        out = np.fromiter(map(_exp_or_inf, flat), dtype=np.float64, count=len(flat))
    return out.reshape(np.shape(values))


class _Standardize:
    def __init__(self, mean: np.ndarray | None, scale: np.ndarray | None) -> None:
        self.mean, self.scale = mean, scale

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = np.array(x, dtype=np.float64)  # a copy, as StandardScaler makes
        if self.mean is not None:
            out -= self.mean
        if self.scale is not None:
            out /= self.scale
        return out


class _Linear:
    def __init__(self, coef: np.ndarray, intercept: np.ndarray) -> None:
        self.coef_t = np.ascontiguousarray(np.asarray(coef).T)  # BLAS wants it in memory, not mapped lazily
        self.intercept = np.asarray(intercept)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        scores: np.ndarray = np.asarray(x, dtype=np.float64) @ self.coef_t + self.intercept
        return scores


class _Trees:
    def __init__(self, ensemble: TreeEnsemble) -> None:
        self.ensemble = ensemble

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.ensemble.predict_raw(x)


def _step(spec: dict[str, Any], array: Any) -> Step:
    op = spec.get("op")
    if op == "standardize":
        return _Standardize(
            array(spec["mean"]) if spec.get("mean") else None, array(spec["scale"]) if spec.get("scale") else None
        )
    if op == "linear":
        return _Linear(array(spec["coef"]), array(spec["intercept"]))
    if op == "trees":
        arrays = {name: array(file) for name, file in spec["arrays"].items()}
        return _Trees(TreeEnsemble.from_arrays(arrays, spec["params"]))
    raise BundleError(f"unknown compiled step {op!r}")


class CompiledRuntime(Runtime):
    """Feature (or text) rows in, the compiled program's labels, numbers and probabilities out."""

    def __init__(self, program: Program, manifest: Manifest, featurizer: Any = None) -> None:
        self.program = program
        self.featurizer = featurizer
        self.labels: list[Any] | None = None
        if program.classes is not None:
            self.labels = class_labels(np.asarray(program.classes), manifest)
        elif program.decision != "value":
            self.labels = label_values(manifest)
        self.lookup = np.asarray(self.labels, dtype=object) if self.labels else None
        # Whether predictions carry probabilities (a Perceptron has none), as the protocols' output lists ask.
        self.has_proba = self.lookup is not None and program.transform != "identity"
        self.feature_names = [f.name for f in manifest.input.features]
        self.explainer: ProgramExplainer | None = None
        self.not_explainable = ""
        try:
            self.explainer = ProgramExplainer(program.steps, program.transform, _training_means(manifest))
        except NotExplainable as exc:
            self.not_explainable = str(exc)

    @classmethod
    def load(cls, bundle_dir: Path, manifest: Manifest, trust_pickle: bool) -> Runtime:
        spec = manifest.options["compiled"]
        program = Program(spec, lambda name: load_array(bundle_dir, name, manifest.artifacts))
        featurizer = None
        if "text" in spec:
            from ferry.runtimes.textfeatures import HashedCharNgrams

            assert program.trees is not None, "a compiled text model starts with trees"
            featurizer = HashedCharNgrams(manifest.options["featurizer"], program.trees.ensemble.features_used)
        return cls(program, manifest, featurizer)

    def predict(self, batch: Any) -> Prediction:
        if self.featurizer is not None:
            # The featurizer writes only the columns the trees read, in their order.
            scores = self.program.scores_compact(self.featurizer.transform(batch))
            values, proba = self.program.head(scores)
        else:
            values, proba = self.program.outputs(np.asarray(batch, dtype=np.float64))
        if self.lookup is None:
            return Prediction(values=np.asarray(values).tolist())
        return Prediction(values=self.lookup[values].tolist(), probabilities=proba)

    def explanation(self) -> dict[str, str]:
        """How ``explain`` answers: ``{method: tree_shap|linear, link: identity|logit|softmax|log}``,
        or ``{unavailable: why}``."""
        if self.explainer is None:
            return {"unavailable": self.not_explainable}
        return {"method": self.explainer.method, "link": self.explainer.link}

    def explain(self, batch: Any) -> Explanation:
        """Exact contributions of each input column to the raw score (``ferry.runtimes.explain``)."""
        explainer = self.explainer
        if explainer is None:
            raise NotExplainable(self.not_explainable)
        row_features = None
        if self.featurizer is not None:
            found = explainer.explain_compact(self.featurizer.transform(batch))
            names = self._column_names(explainer)
            per_text = [self.featurizer.grams_by_column(text) for text in batch]
            row_features = [{column: " | ".join(grams) for column, grams in row.items()} for row in per_text]
        else:
            found = explainer(np.asarray(batch, dtype=np.float64))
            names = self.feature_names or [str(i) for i in range(found.values.shape[2])]
        outputs, positive = None, None
        if self.labels is not None and found.score.shape[1] == len(self.labels) > 1:
            outputs = list(self.labels)
        elif self.labels is not None and len(self.labels) == 2:
            positive = self.labels[1]
        return Explanation(
            found.values,
            found.expected_value,
            found.score,
            names,
            explainer.method,
            explainer.link,
            outputs,
            positive,
            row_features,
        )

    def _column_names(self, explainer: ProgramExplainer) -> list[str]:
        """The hashed n-gram columns' names, made once (446 f-strings a call cost 50-100 us)."""
        names: list[str] | None = getattr(self, "_names", None)
        if names is None:
            names = self._names = [f"column {int(c)}" for c in explainer.trees.ensemble.features_used]
        return names


def _training_means(manifest: Manifest) -> np.ndarray | None:
    """The features' training means, where the build was given training data for every feature."""
    stats = (manifest.metadata or {}).get("training_stats", {}).get("features", {})
    names = [f.name for f in manifest.input.features]
    if not names or any(name not in stats for name in names):
        return None
    return np.asarray([stats[name]["mean"] for name in names], dtype=np.float64)
