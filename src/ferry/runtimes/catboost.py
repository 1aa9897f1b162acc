"""CatBoost through its own library: a ``.cbm`` model (``ferry[catboost]``).

A bundle whose build compiled the model serves its compiled form instead (``ferry.runtimes.compiled``);
this runtime serves the rest (multiclass, whose probabilities CatBoost computes with its own fast ``exp``)
and ``--original-models``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import catboost
import numpy as np

from ferry.bundle.artifacts import model_artifact
from ferry.bundle.manifest import Manifest
from ferry.runtimes.base import Prediction, Runtime, warn_version_drift
from ferry.runtimes.xgboost import own_labels


class CatBoostRuntime(Runtime):
    def __init__(self, model: Any, manifest: Manifest) -> None:
        self.model = model
        found = getattr(model, "classes_", None)
        classes = [] if found is None else [c.item() if hasattr(c, "item") else c for c in found]
        self.labels = own_labels(manifest, classes)
        self.lookup = np.asarray(self.labels, dtype=object) if self.labels else None

    @classmethod
    def load(cls, bundle_dir: Path, manifest: Manifest, trust_pickle: bool) -> Runtime:
        warn_version_drift(manifest, "catboost", catboost.__version__)
        path = model_artifact(bundle_dir, manifest, "model.cbm", "catboost")
        model = catboost.CatBoost()
        model.load_model(str(path))
        return cls(model, manifest)

    def predict(self, batch: Any) -> Prediction:
        rows = np.asarray(batch, dtype=np.float64)
        if self.lookup is None:
            return Prediction(values=np.asarray(self.model.predict(rows, thread_count=1)).tolist())
        proba = np.asarray(self.model.predict(rows, prediction_type="Probability", thread_count=1))
        return Prediction(values=self.lookup[np.argmax(proba, axis=1)].tolist(), probabilities=proba)
