"""Explanations of a scikit-learn ``Pipeline([ColumnTransformer, model])`` per input column, as the user sends them.

The ColumnTransformer's encoded columns are traced back to the input column each was made from (a one-hot
encoding's columns to its one column; a scaler's, an imputer's, an ordinal encoding's or a passthrough
column to itself), and the input columns are the players:

- trees: exact path-dependent TreeSHAP of the game whose players are the input columns: knowing a column
  means knowing every encoded column made from it (``TreeShap(players=...)``: a path's splits on any of
  them are one slot, as a feature met twice is). This is not the sum of the encoded columns' own SHAP
  values (what shap's documentation suggests for one-hot columns), which splits a column's role between
  its categories as if each could be known without the others.
- linear models: ``Σ_j coef_j · (x_j - mean_j)`` over the encoded columns of each input column, ``mean_j``
  the encoded column's training mean: zero after a centring StandardScaler (its ``mean_`` is the
  training mean), a category's training share for a one-hot column and the mean of a column passed
  through (both from the build's ``training_data``). A
  linear model is a sum of one term per input column, so this is the exact Shapley value of each input
  column with the others at their training means.

Both add up to the raw score (the model's margin before its link).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ferry.runtimes.explain import Contributions, NotExplainable, TreeShap, linear
from ferry.runtimes.trees import Unsupported, from_sklearn

# Transformers that map each of their columns to one encoded column of its own.
ONE_TO_ONE = {"StandardScaler", "MinMaxScaler", "MaxAbsScaler", "RobustScaler", "OrdinalEncoder", "SimpleImputer"}


class ColumnExplainer:
    """Exact contributions of each input column of a ``Pipeline([ColumnTransformer, model])`` to the raw score."""

    def __init__(self, pipeline: Any, names: list[str], training: dict[str, Any] | None = None) -> None:
        """``training``: the build's ``training_stats`` (numeric columns' means, text columns' category shares)."""
        steps = getattr(pipeline, "steps", None)
        if not steps or len(steps) != 2 or type(steps[0][1]).__name__ != "ColumnTransformer":
            raise NotExplainable("only a Pipeline of a ColumnTransformer and then the model is explained per column")
        self.encoder, model = steps[0][1], steps[1][1]
        self.names = names
        self.source, self.means = _traced(self.encoder, names, training or {})
        if hasattr(model, "coef_") and hasattr(model, "intercept_"):
            if np.isnan(self.means).any():
                missing = sorted({names[s] for s in self.source[np.isnan(self.means)]})
                raise NotExplainable(
                    f"a linear model needs the training mean of every encoded column, unknown for {missing}: "
                    "build with the training rows (ferry build --training-data FILE.csv, or ferry.build(..., "
                    "training_data=frame)): their column means and category shares"
                )
            self.method, self.link = "linear", "identity"
            self.coef = np.atleast_2d(np.asarray(model.coef_, dtype=np.float64))
            self.intercept = np.atleast_1d(np.asarray(model.intercept_, dtype=np.float64))
            if hasattr(model, "predict_proba"):
                self.link = "logit" if self.coef.shape[0] == 1 else "softmax"
            return
        try:
            ensemble = from_sklearn(model)
        except Unsupported as exc:
            raise NotExplainable(f"{type(model).__name__}: {exc}") from None
        self.method, self.link = "tree_shap", _tree_link(model)
        self.trees = TreeShap(ensemble, players=self.source)

    def __call__(self, frame: Any) -> Contributions:
        encoded = self.encoder.transform(frame)
        encoded = np.asarray(encoded.toarray() if hasattr(encoded, "toarray") else encoded, dtype=np.float64)
        if self.method == "tree_shap":
            return self.trees.explain(encoded)
        found = linear(encoded, self.coef, self.intercept, self.means)
        # One column per input column: the sum of its encoded columns' terms.
        values = np.zeros((len(self.names), encoded.shape[0], found.values.shape[1]))
        np.add.at(values, self.source, found.values.transpose(2, 0, 1))
        return Contributions(values.transpose(1, 2, 0), found.expected_value, found.score)


def _tree_link(model: Any) -> str:
    """A scikit-learn tree model's link from its raw score: gradient boosting's log-odds for classes; a tree's
    or forest's class probabilities are their raw score."""
    classes = getattr(model, "classes_", [])
    if "Boosting" in type(model).__name__ and hasattr(model, "predict_proba"):
        return "logit" if len(classes) == 2 else "softmax"
    return "identity"


def _traced(encoder: Any, names: list[str], training: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """For each encoded column: the input column it was made from, and its training mean (NaN if unknown)."""
    shares: dict[str, dict[str, float]] = training.get("categories", {})
    numbers: dict[str, Any] = training.get("features", {})
    width = sum(s.stop - s.start for s in encoder.output_indices_.values())
    source = np.full(width, -1, dtype=np.intp)
    means = np.full(width, np.nan)
    for name, transformer, columns in encoder.transformers_:
        out = encoder.output_indices_[name]
        if transformer == "drop" or out.stop == out.start:
            continue
        if isinstance(columns, str):
            columns = [columns]
        if not isinstance(columns, list | tuple | np.ndarray):
            raise NotExplainable(f"the ColumnTransformer's '{name}' columns are given as {type(columns).__name__}")
        inputs = [_index(c, names) for c in columns]
        kind = "passthrough" if transformer == "passthrough" else type(transformer).__name__
        if kind == "FunctionTransformer" and getattr(transformer, "func", None) is None:
            kind = "passthrough"  # how a fitted ColumnTransformer holds 'passthrough'
        if kind == "OneHotEncoder":
            if getattr(transformer, "_infrequent_enabled", False):
                raise NotExplainable("a OneHotEncoder grouping infrequent categories")
            at = out.start
            dropped = getattr(transformer, "drop_idx_", None)
            for k, (column, categories) in enumerate(zip(inputs, transformer.categories_, strict=True)):
                kept = [c for j, c in enumerate(categories) if dropped is None or dropped[k] is None or j != dropped[k]]
                known = shares.get(names[column])
                for category in kept:
                    source[at] = column
                    means[at] = known.get(str(category), 0.0) if known is not None else np.nan
                    at += 1
            if at != out.stop:
                raise NotExplainable(
                    f"the OneHotEncoder '{name}' wrote {out.stop - out.start} columns, not {at - out.start}"
                )
            continue
        if (kind != "passthrough" and kind not in ONE_TO_ONE) or out.stop - out.start != len(inputs):
            raise NotExplainable(f"the columns of a {kind} ('{name}') cannot be traced to its input columns")
        if kind == "SimpleImputer" and getattr(transformer, "add_indicator", False):
            raise NotExplainable(f"the SimpleImputer '{name}' adds indicator columns")
        source[out] = inputs
        if kind == "StandardScaler" and getattr(transformer, "with_mean", True):
            means[out] = 0.0  # the scaler's own mean_ is the training mean, sent to zero
        elif kind == "passthrough":
            means[out] = [numbers.get(names[i], {}).get("mean", np.nan) for i in inputs]
    if (source < 0).any():
        raise NotExplainable("some encoded columns could not be traced to an input column")
    return source, means


def _index(column: Any, names: list[str]) -> int:
    if isinstance(column, str):
        if column not in names:
            raise NotExplainable(f"the ColumnTransformer reads a column '{column}' that is not an input")
        return names.index(column)
    if isinstance(column, int | np.integer):
        return int(column)
    raise NotExplainable(f"a ColumnTransformer column given as {type(column).__name__}")
