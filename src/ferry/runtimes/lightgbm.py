"""LightGBM: the Booster's own text format, with an optional stateless text featurizer."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import lightgbm
import numpy as np

from ferry.bundle.artifacts import model_artifact
from ferry.bundle.manifest import Manifest
from ferry.runtimes.base import Prediction, Runtime, argmax_labels, label_values, warn_version_drift
from ferry.runtimes.explain import LINKS, Explanation, NotExplainable
from ferry.runtimes.lightgbm_check import read_booster
from ferry.runtimes.trees import LIGHTGBM_TRANSFORMS


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
        self.feature_names = [f.name for f in manifest.input.features] or list(booster.feature_name())
        self.explains = _explanation(booster, self.featurizer is not None)

    @classmethod
    def load(cls, bundle_dir: Path, manifest: Manifest, trust_pickle: bool) -> Runtime:
        warn_version_drift(manifest, "lightgbm", lightgbm.__version__)
        path = model_artifact(bundle_dir, manifest, "model.txt", "lightgbm")
        return cls(read_booster(path), manifest)  # checked first: LightGBM aborts or loops on a malformed file

    def _features(self, batch: Any) -> Any:
        features = self.featurizer.transform(batch) if self.featurizer is not None else batch
        if self.frame is not None:
            from ferry.runtimes.frames import to_frame

            features = to_frame(batch, self.frame)
        return features

    def predict(self, batch: Any) -> Prediction:
        raw = np.asarray(self.booster.predict(self._features(batch)))
        if not self.labels:
            return Prediction(values=raw.tolist())
        if raw.ndim == 1:  # binary objective: probability of the second class
            raw = np.column_stack([1.0 - raw, raw])
        return Prediction(values=argmax_labels(raw, self.labels), probabilities=raw)

    def explanation(self) -> dict[str, str]:
        """``{method: tree_shap, link}``: LightGBM's own path-dependent TreeSHAP, categorical splits included."""
        return self.explains

    def explain(self, batch: Any) -> Explanation:
        """Each input column's contribution to the raw score, from ``Booster.predict(pred_contrib=True)``."""
        if "unavailable" in self.explains:
            raise NotExplainable(self.explains["unavailable"])
        features = self._features(batch)
        names = self.feature_names
        found = np.asarray(self.booster.predict(features, pred_contrib=True)).reshape(len(batch), -1, len(names) + 1)
        score = np.asarray(self.booster.predict(features, raw_score=True)).reshape(len(batch), -1)
        outputs, positive = None, None
        if self.labels is not None and score.shape[1] == len(self.labels) > 1:
            outputs = list(self.labels)
        elif self.labels is not None and len(self.labels) == 2:
            positive = self.labels[1]
        expected = found[0, :, -1] if len(batch) else np.zeros(score.shape[1])
        link = self.explains["link"]
        return Explanation(found[:, :, :-1], expected, score, names, "tree_shap", link, outputs, positive)


def _explanation(booster: lightgbm.Booster, text: bool) -> dict[str, str]:
    """How a booster explains: LightGBM's ``pred_contrib`` for its objective's link, or why not."""
    if text:
        return {"unavailable": "a LightGBM text model served by LightGBM: its compiled bundle explains it"}
    head = booster.model_to_string(num_iteration=1)
    objective = re.search(r"^objective=(\S+)", head, re.MULTILINE)
    name = objective.group(1) if objective else ""
    if name not in LIGHTGBM_TRANSFORMS:
        return {"unavailable": f"LightGBM objective {name!r} has no known link"}
    if re.search(r"^is_linear=1", head, re.MULTILINE):
        return {"unavailable": "LightGBM linear trees have no TreeSHAP"}
    return {"method": "tree_shap", "link": LINKS[LIGHTGBM_TRANSFORMS[name]]}
