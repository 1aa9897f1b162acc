"""scikit-learn: skops (safe) or, when trusted, pickle/joblib artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import sklearn

from ferry.bundle.manifest import Manifest
from ferry.errors import BundleError
from ferry.runtimes.base import Prediction, Runtime, class_labels, require_trust, warn_version_drift
from ferry.runtimes.fastpath import compile_estimator


class SklearnRuntime(Runtime):
    def __init__(self, estimator: Any, manifest: Manifest) -> None:
        self.estimator = estimator
        classes = getattr(estimator, "classes_", None)
        self.label_lookup = (
            np.asarray(class_labels(np.asarray(classes), manifest.labels), dtype=object)
            if classes is not None
            else None
        )
        self.classes = np.asarray(classes) if classes is not None else None
        self.has_proba = hasattr(estimator, "predict_proba") and classes is not None
        n_features = getattr(estimator, "n_features_in_", None)
        self.compiled = compile_estimator(estimator, int(n_features)) if n_features else None
        self.predict_fn = self.compiled.predict if self.compiled else estimator.predict
        self.proba_fn = (self.compiled.predict_proba if self.compiled else None) or (
            estimator.predict_proba if self.has_proba else None
        )

    @classmethod
    def load(cls, bundle_dir: Path, manifest: Manifest, trust_pickle: bool) -> Runtime:
        warn_version_drift(manifest, "scikit-learn", sklearn.__version__)
        path = bundle_dir / manifest.options.get("artifact", "model.skops")
        require_trust(path, manifest, trust_pickle)
        return cls(_load_estimator(path, manifest), manifest)

    def predict(self, batch: Any) -> Prediction:
        y = self.predict_fn(batch)
        if self.classes is None or self.label_lookup is None:
            return Prediction(values=np.asarray(y).tolist())
        values = self.label_lookup[np.searchsorted(self.classes, y)].tolist()
        probabilities = self.proba_fn(batch) if self.proba_fn is not None else None
        return Prediction(values=values, probabilities=probabilities)


def _load_estimator(path: Path, manifest: Manifest) -> Any:
    if path.suffix == ".skops":
        import skops.io as sio

        allowed = set(manifest.options.get("skops_trusted_types", []))
        unknown = [t for t in sio.get_untrusted_types(file=path) if t not in allowed]
        if unknown:
            raise BundleError(f"{path.name}: holds types the bundle did not declare as trusted: {', '.join(unknown)}")
        return sio.load(path, trusted=sorted(allowed))
    import joblib

    return joblib.load(path)
