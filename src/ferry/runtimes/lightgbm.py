"""LightGBM: the Booster's own text format, with an optional stateless text featurizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightgbm
import numpy as np

from ferry.bundle.artifacts import model_artifact
from ferry.bundle.manifest import Manifest
from ferry.runtimes.base import Prediction, Runtime, argmax_labels, label_values, warn_version_drift
from ferry.runtimes.lightgbm_check import read_booster


def make_featurizer(spec: dict[str, Any]) -> Any:
    """A stateless text featurizer from its manifest spec: character n-grams, hashed.

    Hashing needs no fitted vocabulary, so the spec alone rebuilds it exactly; the example bundles
    write every parameter out, so a server written by hand can rebuild it from the manifest too.
    """
    from sklearn.feature_extraction.text import HashingVectorizer

    if spec.get("type") != "char_ngrams":
        raise ValueError(f"unknown featurizer type {spec.get('type')!r}")
    low, high = spec.get("ngram_range", [1, 3])
    return HashingVectorizer(
        analyzer=spec.get("analyzer", "char_wb"),
        ngram_range=(int(low), int(high)),
        n_features=int(spec.get("n_features", 2**14)),
        alternate_sign=bool(spec.get("alternate_sign", False)),
        norm=spec.get("norm", "l2"),
        lowercase=bool(spec.get("lowercase", True)),
    )


class LightGBMRuntime(Runtime):
    def __init__(self, booster: lightgbm.Booster, manifest: Manifest) -> None:
        self.booster = booster
        self.labels = label_values(manifest)
        # Fitted on a DataFrame with categoricals: LightGBM maps their categories to its codes itself.
        self.frame = manifest.input.features if manifest.input.frame else None
        spec = manifest.options.get("featurizer")
        self.featurizer = make_featurizer(spec) if spec else None

    @classmethod
    def load(cls, bundle_dir: Path, manifest: Manifest, trust_pickle: bool) -> Runtime:
        warn_version_drift(manifest, "lightgbm", lightgbm.__version__)
        path = model_artifact(bundle_dir, manifest, "model.txt", "lightgbm")
        return cls(read_booster(path), manifest)  # checked first: LightGBM aborts or loops on a malformed file

    def predict(self, batch: Any) -> Prediction:
        features = self.featurizer.transform(batch) if self.featurizer is not None else batch
        if self.frame is not None:
            from ferry.runtimes.frames import to_frame

            features = to_frame(batch, self.frame)
        raw = np.asarray(self.booster.predict(features))
        if not self.labels:
            return Prediction(values=raw.tolist())
        if raw.ndim == 1:  # binary objective: probability of the second class
            raw = np.column_stack([1.0 - raw, raw])
        return Prediction(values=argmax_labels(raw, self.labels), probabilities=raw)
