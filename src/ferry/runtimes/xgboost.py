"""XGBoost through its own library: a model saved as JSON or UBJSON (``ferry[xgboost]``).

A bundle whose build compiled the model serves its compiled form instead (``ferry.runtimes.compiled``),
which gives the same float32 answers without XGBoost; this runtime serves the rest (DART, categorical
splits, vector leaves, other objectives) and ``--original-models``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import xgboost

from ferry.bundle.artifacts import model_artifact
from ferry.bundle.boosters import load_xgboost
from ferry.bundle.manifest import Manifest
from ferry.runtimes.base import Prediction, Runtime, warn_version_drift


def own_labels(manifest: Manifest, classes: list[Any]) -> list[Any] | None:
    """The classes a classifier answers: its own (typed: 0, 1, ...) unless the manifest renames them."""
    if not manifest.labels:
        return None
    if [str(c) for c in classes] == list(manifest.labels):
        return list(classes)
    return list(manifest.labels)


class XGBoostRuntime(Runtime):
    def __init__(self, booster: Any, manifest: Manifest) -> None:
        self.booster = booster
        self.labels = own_labels(manifest, list(range(len(manifest.labels or []))))
        self.lookup = np.asarray(self.labels, dtype=object) if self.labels else None
        # A categorical feature's values are its categories; XGBoost takes the code (the index in its own list)
        self.codes = {
            j: {category: float(code) for code, category in enumerate(f.categories)}
            for j, f in enumerate(manifest.input.features)
            if f.dtype == "category" and f.categories
        }

    @classmethod
    def load(cls, bundle_dir: Path, manifest: Manifest, trust_pickle: bool) -> Runtime:
        warn_version_drift(manifest, "xgboost", xgboost.__version__)
        name = "model.ubj" if "model.ubj" in manifest.artifacts else "model.json"
        path = model_artifact(bundle_dir, manifest, name, "xgboost")
        booster = load_xgboost(path)
        booster.set_param({"nthread": 1})  # one request's rows: threads cost more than they save
        return cls(booster, manifest)

    def predict(self, batch: Any) -> Prediction:
        rows = self._coded(batch) if self.codes else np.asarray(batch, dtype=np.float32)
        raw = np.asarray(self.booster.inplace_predict(rows))
        if self.lookup is None:
            return Prediction(values=raw.tolist())
        # XGBClassifier.predict_proba: [1 - p, p] for binary:logistic; its predict: the column of the largest.
        proba = raw if raw.ndim == 2 else np.column_stack([1 - raw, raw])
        return Prediction(values=self.lookup[np.argmax(proba, axis=1)].tolist(), probabilities=proba)

    def _coded(self, batch: Any) -> np.ndarray:
        """Rows with each category replaced by XGBoost's code for it; a missing or unseen one is missing (NaN),
        as XGBoost reads a pandas categorical value outside the categories it was fitted on."""
        rows = np.asarray(batch, dtype=object)
        out = np.empty(rows.shape, dtype=np.float32)
        for j in range(rows.shape[1]):
            codes = self.codes.get(j)
            column = rows[:, j]
            if codes is None:
                out[:, j] = [np.nan if v is None else v for v in column]
            else:
                out[:, j] = [np.nan if v is None or v != v else codes.get(v, np.nan) for v in column]
        return out
