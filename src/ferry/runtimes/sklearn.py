"""scikit-learn: skops (safe) or, when the server trusts pickles, pickle/joblib artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import sklearn

from ferry.bundle.artifacts import artifact_file, describe, model_artifact, sniff
from ferry.bundle.manifest import Manifest
from ferry.bundle.trust import SERVER_FLAG, Trust, load_estimator
from ferry.errors import BundleError
from ferry.runtimes.base import Prediction, Runtime, class_labels, warn_version_drift
from ferry.runtimes.explain import EXPLAINABLE, Explanation, NotExplainable
from ferry.runtimes.fastpath import compile_estimator


class SklearnRuntime(Runtime):
    def __init__(self, estimator: Any, manifest: Manifest) -> None:
        self.estimator = estimator
        # A model fitted on a DataFrame (a ColumnTransformer selecting columns by name, say) is called with one.
        self.frame = manifest.input.features if manifest.input.frame else None
        self.features = self.frame
        classes = getattr(estimator, "classes_", None)
        self.label_lookup = (
            np.asarray(class_labels(np.asarray(classes), manifest), dtype=object) if classes is not None else None
        )
        self.classes = np.asarray(classes) if classes is not None else None
        self.has_proba = hasattr(estimator, "predict_proba") and classes is not None
        n_features = getattr(estimator, "n_features_in_", None)
        numeric = self.frame is None or all(f.dtype not in ("string", "category") for f in self.frame)
        self.compiled = compile_estimator(estimator, int(n_features)) if n_features and numeric else None
        if self.compiled is not None:
            self.frame = None  # verified on plain rows: the numeric fast path needs no DataFrame
        self.explainer, self.not_explainable = _column_explainer(estimator, manifest)
        self.predict_fn = self.compiled.predict if self.compiled else estimator.predict
        self.proba_fn = (self.compiled.predict_proba if self.compiled else None) or (
            estimator.predict_proba if self.has_proba else None
        )

    @classmethod
    def load(cls, bundle_dir: Path, manifest: Manifest, trust_pickle: bool) -> Runtime:
        warn_version_drift(manifest, "scikit-learn", sklearn.__version__)
        steps = manifest.options.get("steps")
        if steps:  # several files composed at build: every step but the last transforms
            from sklearn.pipeline import make_pipeline

            paths = [artifact_file(bundle_dir, manifest.artifacts, step, "options.steps") for step in steps]
            return cls(make_pipeline(*(_load_estimator(p, manifest, trust_pickle) for p in paths)), manifest)
        path = model_artifact(bundle_dir, manifest, "model.skops")
        return cls(_load_estimator(path, manifest, trust_pickle), manifest)

    def predict(self, batch: Any) -> Prediction:
        if self.frame is not None:
            from ferry.runtimes.frames import to_frame

            batch = to_frame(batch, self.frame)
        y = self.predict_fn(batch)
        if self.classes is None or self.label_lookup is None:
            return Prediction(values=np.asarray(y).tolist())
        values = self.label_lookup[np.searchsorted(self.classes, y)].tolist()
        probabilities = self.proba_fn(batch) if self.proba_fn is not None else None
        return Prediction(values=values, probabilities=probabilities)

    def explanation(self) -> dict[str, str]:
        """``{method, link}`` for a Pipeline of a ColumnTransformer and a tree or linear model, else why not."""
        if self.explainer is None:
            return {"unavailable": self.not_explainable}
        return {"method": self.explainer.method, "link": self.explainer.link}

    def explain(self, batch: Any) -> Explanation:
        """Each input column's contribution to the raw score (``ferry.runtimes.columns_explain``)."""
        if self.explainer is None:
            raise NotExplainable(self.not_explainable)
        from ferry.runtimes.frames import to_frame

        assert self.features is not None
        found = self.explainer(to_frame(batch, self.features))
        labels = None if self.label_lookup is None else list(self.label_lookup)
        outputs = labels if labels is not None and found.score.shape[1] == len(labels) > 1 else None
        positive = labels[1] if labels is not None and len(labels) == 2 and outputs is None else None
        names = [f.name for f in self.features]
        method, link = self.explainer.method, self.explainer.link
        return Explanation(found.values, found.expected_value, found.score, names, method, link, outputs, positive)


def _column_explainer(estimator: Any, manifest: Manifest) -> tuple[Any, str]:
    """The explainer of a Pipeline over named columns, or None and why there is none."""
    from ferry.runtimes.columns_explain import ColumnExplainer

    if not manifest.input.frame or type(estimator).__name__ != "Pipeline":
        return None, f"the sklearn runtime explains a Pipeline over named columns; Ferry explains {EXPLAINABLE}"
    names = [f.name for f in manifest.input.features]
    training = (manifest.metadata or {}).get("training_stats")
    try:
        return ColumnExplainer(estimator, names, training), ""
    except NotExplainable as exc:
        return None, str(exc)


def _load_estimator(path: Path, manifest: Manifest, trust_pickle: bool) -> Any:
    """A skops file, or a pickle, as the one loading policy allows (``ferry.bundle.trust``): decided by what the
    file holds, not its name, and by the server's trust alone, never by what the bundle declares."""
    kind = sniff(path)
    if kind in ("lightgbm", "onnx"):
        raise BundleError(f"{path.name}: holds {describe(kind)}, not a scikit-learn model")
    subject = f"{manifest.name}:{manifest.version}: artifact '{path.name}'"
    return load_estimator(path, Trust(trust_pickle, SERVER_FLAG), subject)
