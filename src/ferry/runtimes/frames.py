"""A tabular batch as the pandas DataFrame a model was fitted on: its columns, in order, with their dtypes.

Only models whose manifest says ``input.frame`` come here, so pandas is imported by them alone. The protocols
hand over a [rows, features] array (numbers, or objects where the features are of several types); each
column becomes the dtype it was fitted with: text (missing values as NaN, as ``read_csv`` writes them),
integers, floats, booleans, or a categorical over the fitted categories (a LightGBM model's).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ferry.bundle.manifest import Feature

_NUMERIC = {"float64": np.float64, "float32": np.float32, "int64": np.int64, "int32": np.int32, "bool": np.bool_}


def to_frame(batch: Any, features: list[Feature]) -> Any:
    import pandas as pd  # type: ignore[import-untyped,unused-ignore]

    array = np.asarray(batch)
    if array.ndim != 2 or array.shape[1] != len(features):
        raise ValueError(f"expected rows of {len(features)} features, got an array of shape {array.shape}")
    return pd.DataFrame({f.name: _column(pd, array[:, j], f) for j, f in enumerate(features)}, copy=False)


def _column(pd: Any, values: np.ndarray, feature: Feature) -> Any:
    dtype = feature.dtype
    if dtype == "category":
        return pd.Categorical(_missing_as_nan(values), categories=feature.categories)
    if dtype == "string":
        return pd.Series(_missing_as_nan(values), dtype=object)
    wanted = _NUMERIC[dtype]
    if values.dtype == object:
        missing = np.fromiter((v is None for v in values), bool, len(values))
        if missing.any() or (feature.allow_nan and dtype != "bool"):
            # integers with a missing value are floats in pandas, as in the DataFrame the model saw
            floats = np.where(missing, np.nan, values).astype(np.float64)
            return floats if np.isnan(floats).any() else floats.astype(wanted)
        return values.astype(wanted)
    return values.astype(wanted, copy=False)


def _missing_as_nan(values: np.ndarray) -> np.ndarray:
    if values.dtype != object:
        return values
    out = values.copy()
    out[np.fromiter((v is None for v in values), bool, len(values))] = np.nan
    return out
