"""Turn decoded JSON (records, rows, strings) into a runtime batch, checked against the input schema.

Built once per model at load; every error names the field and the problem.
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Any

import msgspec
import numpy as np

from ferry.bundle.manifest import Feature, InputSchema
from ferry.errors import InvalidInput

_NUMPY_DTYPES: dict[str, Any] = {
    "float64": np.float64,
    "float32": np.float32,
    "int64": np.int64,
    "int32": np.int32,
    "bool": np.bool_,
    "string": object,
    "category": object,
}


# Text inputs longer than this are refused unless the schema sets its own ``max_length``.
MAX_STRING_LENGTH = 1_000_000

# The largest magnitude each numeric dtype holds: JSON integers are unbounded, and numpy refuses (or, for
# float32, turns into infinity) a value beyond it.
LIMITS: dict[str, float | int] = {
    "float64": float(np.finfo(np.float64).max),
    "float32": float(np.finfo(np.float32).max),
    "int64": 2**63 - 1,
    "int32": 2**31 - 1,
}


def _in_range(value: float | int, dtype: str, where: str) -> None:
    limit = LIMITS[dtype]
    if not -limit - (dtype[:3] == "int") <= value <= limit:  # an int's range reaches one further below zero
        raise InvalidInput(f"value out of range for {dtype}", where)


def _json_type(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}.get(
        type(value), "null" if value is None else type(value).__name__
    )


def check_value(value: Any, dtype: str, allow_nan: bool, where: str) -> Any:
    """One scalar against its declared dtype; returns the value to put in the array."""
    kind = type(value)
    if dtype.startswith("float"):
        if kind is float:
            if not math.isfinite(value):
                if not allow_nan:
                    raise InvalidInput("NaN or infinity is not allowed", where)
                return value
            if dtype == "float32":
                _in_range(value, dtype, where)
            return value
        if kind is int:
            _in_range(value, dtype, where)
            return value
        if value is None and allow_nan:
            return math.nan
        if value is None:
            raise InvalidInput("null (a missing value) is not allowed", where)
        raise InvalidInput(f"Expected `number`, got `{_json_type(value)}`", where)
    if value is None and allow_nan:
        return None  # a missing value: NaN in the model's DataFrame
    if dtype.startswith("int"):
        if kind is int:
            _in_range(value, dtype, where)
            return value
        if kind is float and value.is_integer():
            _in_range(value, dtype, where)
            return int(value)
        raise InvalidInput(f"Expected `integer`, got `{_json_type(value)}`", where)
    if dtype == "bool":
        if kind is bool:
            return value
        raise InvalidInput(f"Expected `boolean`, got `{_json_type(value)}`", where)
    if dtype == "category":
        if kind in (str, int, float, bool):
            return value
        raise InvalidInput(f"Expected a category (a string or a number), got `{_json_type(value)}`", where)
    if kind is str:
        return value
    raise InvalidInput(f"Expected `string`, got `{_json_type(value)}`", where)


_MISSING_TEXT = frozenset({"", "nan", "NaN", "null", "None"})


def _from_text(text: str, dtype: str, where: str) -> Any:
    """A feature's value from its text: a number, an integer, a boolean, or the text itself."""
    if dtype in ("string", "category"):
        return text
    if text in _MISSING_TEXT:
        return None
    try:
        if dtype.startswith("float"):
            return float(text)
        if dtype.startswith(("int", "uint")):
            return int(text)
    except ValueError:
        raise InvalidInput(
            f"'{text[:40]}' is not {'a number' if dtype.startswith('float') else 'an integer'}", where
        ) from None
    if dtype == "bool" and text.lower() in ("true", "false", "1", "0"):
        return text.lower() in ("true", "1")
    raise InvalidInput(f"'{text[:40]}' is not a boolean (true or false)", where)


def value_dtype(feature: Feature) -> str:
    """The JSON type a feature's values are checked against: a categorical's is that of its categories."""
    if feature.dtype != "category":
        return feature.dtype
    kinds = {type(c) for c in feature.categories or []}
    if kinds == {str}:
        return "string"
    if kinds == {int}:
        return "int64"
    return "category"


class InputCodec:
    """Builds runtime batches for one input schema."""

    def __init__(self, schema: InputSchema) -> None:
        self.schema = schema
        self.kind = schema.kind
        self.features = schema.features
        self.feature_names = [f.name for f in schema.features]
        self.name_set = frozenset(self.feature_names)
        # (name, the JSON type of its values, whether a missing value is allowed) per feature; a categorical's
        # values may be missing (a value pandas does not know is one too)
        self.checks = [(f.name, value_dtype(f), f.allow_nan or f.dtype == "category") for f in schema.features]
        # Columns an encoder refuses unknown values of: (column, name, the values it knows)
        self.closed = [(j, f.name, frozenset(f.values)) for j, f in enumerate(schema.features) if f.values is not None]
        if schema.kind == "tensor":
            tensor = schema.tensors[0]
            self.dtype, self.shape, self.allow_nan = tensor.dtype, tensor.shape, tensor.allow_nan
        else:
            dtypes = {f.dtype for f in schema.features}
            self.dtype = dtypes.pop() if len(dtypes) == 1 else "string"
            self.shape = [-1, len(schema.features)]
            self.allow_nan = any(f.allow_nan for f in schema.features)
        # Rows of finite floats (the common case) are checked in C by msgspec and numpy; anything
        # unusual falls back to the value-by-value check, which names the field and the problem.
        float_dtypes = {"float64", "float32"}
        self._float_rows = (
            schema.kind in ("features", "tensor")
            and len(self.shape) == 2
            and self.dtype in float_dtypes
            and all(f.dtype in float_dtypes for f in schema.features)
            and not self.allow_nan
        )

    def _fast_float_rows(self, rows: list[Any]) -> np.ndarray | None:
        try:
            array = np.asarray(msgspec.convert(rows, list[list[float]]), dtype=_NUMPY_DTYPES[self.dtype])
        except (msgspec.ValidationError, ValueError):  # ValueError: ragged rows
            return None
        width = self.shape[1]
        if array.ndim != 2 or (width >= 0 and array.shape[1] != width) or not np.isfinite(array).all():
            return None
        return array

    # -- records: objects of named features, or {field: text} / {field: base64 image} ---------------
    def from_records(self, records: list[Any], prefix: str = "$", one_object: bool = False) -> Any:
        """``records`` from a JSON array at ``prefix`` (errors name ``prefix[i]``), or the one object the body is
        (``one_object``: errors name ``prefix`` itself)."""
        if self.kind in ("text", "image"):
            wheres = [prefix if one_object else f"{prefix}[{i}]" for i in range(len(records))]
            return [
                self._scalar(self._field(r, w), f"{w}.{self.schema.field}")
                for r, w in zip(records, wheres, strict=True)
            ]
        if self.kind == "tensor":
            return self.from_rows([self._field(r, f"{prefix}[{i}]") for i, r in enumerate(records)], prefix)
        rows, wheres = [], []
        for i, record in enumerate(records):
            where = prefix if one_object else f"{prefix}[{i}]"
            if not isinstance(record, dict):
                raise InvalidInput(f"Expected `object`, got `{_json_type(record)}`", where)
            if record.keys() != self.name_set:
                self._key_error(record, where)
            rows.append([check_value(record[n], dtype, nan, f"{where}.{n}") for n, dtype, nan in self.checks])
            wheres.append(where)
        return self._array(rows, prefix, wheres)

    def from_text_rows(self, rows: list[list[str]], prefix: str) -> np.ndarray:
        """Rows of text (a BYTES matrix), each value read as its feature's type, then checked as a JSON value is."""
        out = []
        for i, row in enumerate(rows):
            where = f"{prefix}[{i}]"
            out.append(
                [
                    check_value(_from_text(text, dtype, f"{where}[{j}]"), dtype, nan, f"{where}[{j}]")
                    for j, (text, (_, dtype, nan)) in enumerate(zip(row, self.checks, strict=True))
                ]
            )
        return self._array(out, prefix)

    def _field(self, record: Any, where: str) -> Any:
        key = self.schema.field if self.kind != "tensor" else self.schema.tensors[0].name
        if not isinstance(record, dict):
            raise InvalidInput(f"Expected `object` with key '{key}', got `{_json_type(record)}`", where)
        if key not in record:
            raise InvalidInput(f"missing field '{key}'", f"{where}.{key}")
        extra = sorted(set(record) - {key})
        if extra:
            raise InvalidInput(f"unknown field '{extra[0]}'; expected only '{key}'", f"{where}.{extra[0]}")
        return record[key]

    def _key_error(self, record: dict[str, Any], where: str) -> None:
        missing = [n for n in self.feature_names if n not in record]
        if missing:
            raise InvalidInput(
                f"missing feature '{missing[0]}'; expected {', '.join(self.feature_names)}", f"{where}.{missing[0]}"
            )
        extra = sorted(k for k in record if k not in self.name_set)
        raise InvalidInput(
            f"unknown feature '{extra[0]}'; expected {', '.join(self.feature_names)}", f"{where}.{extra[0]}"
        )

    # -- rows: bare arrays of values in schema order, or nested tensors --------------------------------
    def from_rows(self, rows: list[Any], prefix: str = "$") -> Any:
        if self.kind in ("text", "image"):
            return [self._scalar(v, f"{prefix}[{i}]") for i, v in enumerate(rows)]
        if self._float_rows:
            fast = self._fast_float_rows(rows)
            if fast is not None:
                return fast
        width = self.shape[1] if len(self.shape) > 1 else -1
        checks = self.checks or None
        out = []
        for i, row in enumerate(rows):
            where = f"{prefix}[{i}]" if len(rows) > 1 else prefix
            if not isinstance(row, list):
                raise InvalidInput(f"Expected `array`, got `{_json_type(row)}`", where)
            if width >= 0 and len(row) != width:
                raise InvalidInput(f"expected {width} values per row, got {len(row)}", where)
            if self.kind == "tensor" and len(self.shape) > 2:
                out.append(self._nested(row, self.shape[2:], where))
                continue
            if checks:
                out.append([check_value(v, checks[j][1], checks[j][2], f"{where}[{j}]") for j, v in enumerate(row)])
            else:
                out.append([check_value(v, self.dtype, self.allow_nan, f"{where}[{j}]") for j, v in enumerate(row)])
        if width < 0 and len({len(r) for r in out}) > 1:
            raise InvalidInput("rows have different lengths", prefix)
        return self._array(out, prefix)

    def _nested(self, value: Any, shape: list[int], where: str) -> Any:
        if not shape:
            return check_value(value, self.dtype, self.allow_nan, where)
        if not isinstance(value, list) or (shape[0] >= 0 and len(value) != shape[0]):
            raise InvalidInput(f"expected an array of length {shape[0]}", where)
        return [self._nested(v, shape[1:], f"{where}[{j}]") for j, v in enumerate(value)]

    def _array(self, rows: list[Any], where: str = "$", records: list[str] | None = None) -> np.ndarray:
        dtype = _NUMPY_DTYPES[self.dtype]
        if dtype is not object or self.kind != "features":
            table = np.asarray(rows, dtype=dtype)
        else:
            table = np.empty((len(rows), len(rows[0]) if rows else 0), dtype=object)  # never a ragged or 3-D array
            table[:] = rows
        self.check_known(table, where, records)
        return table

    def check_known(self, table: np.ndarray, where: str = "$", records: list[str] | None = None) -> None:
        """A value an encoder was not fitted on (and refuses) is the client's mistake, named here, not the
        model's ValueError (a 500) for the whole batch; ``records``: each row's JSON path, to name its field."""
        for j, name, known in self.closed:
            for i, value in enumerate(table[:, j].tolist()):
                if value not in known and not (value is None or (isinstance(value, float) and math.isnan(value))):
                    shown = ", ".join(sorted(map(repr, known))[:10])
                    field = f"{records[i]}.{name}" if records is not None else where
                    raise InvalidInput(f"unknown value {value!r} for feature '{name}'; the model knows {shown}", field)

    def _scalar(self, value: Any, where: str) -> Any:
        if not isinstance(value, str):
            raise InvalidInput(f"Expected `string`, got `{_json_type(value)}`", where)
        limit = self.schema.max_length or MAX_STRING_LENGTH
        if len(value) > limit:
            raise InvalidInput(f"string is longer than {limit} characters", where)
        if self.kind == "image":
            try:
                return base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise InvalidInput("not valid base64", where) from None
        return value
