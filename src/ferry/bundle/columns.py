"""The columns a model was fitted on, read from the model itself: names, dtypes, categories, missing values.

A scikit-learn model fitted on a DataFrame keeps its column names (``feature_names_in_``); the steps that
read each column say its type: an encoder's categories (text, integers, booleans), an imputer's statistics
(and that a value may be missing), a scaler or estimator (numbers). A LightGBM model keeps its pandas
categoricals and their categories. What no step tells (a ``FunctionTransformer``, a class of the user's)
is left ``None``, for a ``--sample`` row or ``--features name:type`` to say.
"""

from __future__ import annotations

import math
import re
from typing import Any

Column = dict[str, Any]  # a manifest feature, plus "example": a valid value for a generated sample
_ENCODERS = ("OneHotEncoder", "OrdinalEncoder", "TargetEncoder")
_NAN_ESTIMATORS = ("HistGradientBoostingClassifier", "HistGradientBoostingRegressor", "SimpleImputer")


def sklearn_columns(model: Any) -> list[Column | None] | None:
    """Per fitted column, what the model says of it (None where nothing does); None if not fitted on a DataFrame."""
    names = getattr(model, "feature_names_in_", None)
    if names is None:
        return None
    names = [str(n) for n in names]
    found: dict[str, Column | None] = {}
    _read(model, names, found)
    return [found.get(n) for n in names]


def _read(step: Any, columns: list[str], found: dict[str, Column | None]) -> None:
    kind = type(step).__name__
    if kind == "FunctionTransformer" and getattr(step, "func", True) is None:
        step = "passthrough"  # how a fitted ColumnTransformer (scikit-learn 1.5+) keeps "passthrough": no code
    if isinstance(step, str):  # "passthrough" reaches the next estimator, which takes numbers; "drop" any
        for c in columns:
            found[c] = _number(c, False) if step == "passthrough" else _unread(c)
        return
    if kind == "Pipeline":
        steps = [s for _, s in step.steps if s not in (None, "passthrough")]
        if steps and type(steps[0]).__name__ == "SimpleImputer" and len(steps) > 1:
            _read(steps[1], columns, found)
            for c in columns:  # the imputer fills what is missing before the next step reads it
                found[c] = _imputed(steps[0], columns.index(c), c, found.get(c))
            return
        _read(steps[0] if steps else "passthrough", columns, found)
        return
    if kind == "ColumnTransformer":
        indices = getattr(step, "_transformer_to_input_indices", {})
        all_names = [str(n) for n in getattr(step, "feature_names_in_", columns)]
        for name, transformer, _ in step.transformers_:
            chosen = [all_names[i] for i in indices.get(name, [])]
            if chosen:
                _read(transformer, chosen, found)
        return
    if kind in _NAN_ESTIMATORS[:2] and getattr(step, "_preprocessor", None) is not None:
        # categorical_features (e.g. "from_dtype"): its own encoder reads those columns' categories, an unknown
        # one as missing; the other columns are numbers, missing values allowed
        _read(step._preprocessor, columns, found)
        for c in columns:
            column = found.get(c)
            if column is None or column.get("dtype") == "float64":
                found[c] = _number(c, True)
            else:
                column["allow_nan"] = True  # a missing category is one more the model reads as missing
        return
    if kind in _ENCODERS and hasattr(step, "categories_"):
        closed = getattr(step, "handle_unknown", "error") == "error"  # it raises on a value it was not fitted on
        for c, categories in zip(columns, step.categories_, strict=False):
            found[c] = _categorical(c, list(categories), closed)
        return
    if kind == "SimpleImputer":
        for i, c in enumerate(columns):
            found[c] = _imputed(step, i, c, None)
        return
    if type(step).__module__.startswith("lightgbm") and hasattr(step, "booster_"):  # its scikit-learn API
        typed = {c["name"]: c for c in lightgbm_columns(step.booster_) or []}
        for c in columns:
            found[c] = typed.get(c) or _number(c, True)  # LightGBM takes missing values
        return
    if kind == "FunctionTransformer" or not type(step).__module__.startswith("sklearn"):
        for c in columns:
            found[c] = None  # code of its own: only a sample or --features can say what it takes
        return
    for c in columns:
        found[c] = _number(c, kind in _NAN_ESTIMATORS)


def _unread(name: str) -> Column:
    """A column the model drops (a ColumnTransformer's ``remainder="drop"``, say): whatever the client's record
    holds there, text, a number, a boolean or null, is taken and never read (a category with no categories)."""
    return {"name": name, "dtype": "category", "categories": [], "example": 0.0}


def _number(name: str, allow_nan: bool) -> Column:
    return {"name": name, "dtype": "float64", **({"allow_nan": True} if allow_nan else {}), "example": 0.0}


def _categorical(name: str, categories: list[Any], closed: bool = False) -> Column:
    missing = any(c is None or (isinstance(c, float) and math.isnan(c)) for c in categories)
    known = [c for c in categories if not (c is None or (isinstance(c, float) and math.isnan(c)))]
    values = [_plain(c) for c in known]
    kinds = {type(v) for v in values}
    dtype = "string" if kinds <= {str} else "bool" if kinds == {bool} else "int64" if kinds == {int} else "float64"
    column: Column = {"name": name, "dtype": dtype, "example": values[0] if values else ""}
    if missing:
        column["allow_nan"] = True
    if closed and values:
        column["values"] = values  # anything else is the client's mistake: a 400 naming the column, not a 500
    return column


def _imputed(imputer: Any, index: int, name: str, after: Column | None) -> Column:
    statistics = getattr(imputer, "statistics_", None)
    value = _plain(statistics[index]) if statistics is not None and index < len(statistics) else None
    column = dict(after) if after is not None else _number(name, True)
    if isinstance(value, str):
        column.update(dtype="string", example=value)
    column["allow_nan"] = True
    return column


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python value JSON carries."""
    return value.item() if hasattr(value, "item") else value


def lightgbm_columns(booster: Any) -> list[Column] | None:
    """The features of a LightGBM model fitted on a DataFrame with categoricals; None without categoricals."""
    categorical = getattr(booster, "pandas_categorical", None)
    if not categorical:
        return None
    found = re.search(r"^\[categorical_feature: ([0-9,]*)\]$", booster.model_to_string(), re.MULTILINE)
    indices = [int(i) for i in found.group(1).split(",") if i] if found else []
    if len(indices) != len(categorical):
        return None
    names = booster.feature_name()
    columns: list[Column] = [{"name": n, "dtype": "float64", "allow_nan": True, "example": 0.0} for n in names]
    for index, categories in zip(indices, categorical, strict=True):
        values = [_plain(c) for c in categories]
        columns[index] = {"name": names[index], "dtype": "category", "categories": values, "example": values[0]}
    return columns


_SAMPLE_TYPES = {str: "string", bool: "bool", int: "int64", float: "float64"}


def from_sample(name: str, value: Any) -> Column | None:
    """A column's type as one sample row shows it (a string, an integer, a float, a boolean)."""
    dtype = _SAMPLE_TYPES.get(type(value))
    return {"name": name, "dtype": dtype, "example": value} if dtype else None


_DECLARED = {
    "float": "float64",
    "float64": "float64",
    "double": "float64",
    "float32": "float32",
    "int": "int64",
    "int64": "int64",
    "long": "int64",
    "int32": "int32",
    "bool": "bool",
    "boolean": "bool",
    "str": "string",
    "string": "string",
}


def declared(spec: str) -> Column:
    """``name`` or ``name:type`` from ``--features`` (a trailing ``?`` allows a missing value: ``age:int?``)."""
    name, _, type_name = spec.partition(":")
    column: Column = {"name": name.strip()}
    if type_name:
        type_name = type_name.strip().lower()
        if type_name.endswith("?"):
            column["allow_nan"] = True
            type_name = type_name[:-1]
        if type_name not in _DECLARED:
            raise ValueError(
                f"--features {spec}: unknown type '{type_name}'; use one of {', '.join(sorted(_DECLARED))}"
            )
        column["dtype"] = _DECLARED[type_name]
    return column
