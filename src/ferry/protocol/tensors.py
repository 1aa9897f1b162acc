"""Open Inference tensors: datatypes, shape checks, JSON data and the raw little-endian byte layout."""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np

from ferry.errors import InvalidInput

# OIP datatype -> numpy dtype; BYTES is an object array of ``bytes`` or ``str``.
DATATYPES: dict[str, Any] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}

# Ferry's manifest dtypes as OIP datatypes.
FERRY_DATATYPES = {
    "float64": "FP64",
    "float32": "FP32",
    "int64": "INT64",
    "int32": "INT32",
    "bool": "BOOL",
    "string": "BYTES",
    "category": "BYTES",
}

# Which typed ``contents`` field of a gRPC tensor carries each datatype (FP16 travels only as raw bytes).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

_INTEGER = ("UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64")
_FLOAT = ("FP16", "FP32", "FP64")

# Which request datatypes convert without loss into what a model takes.
ACCEPTS: dict[str, tuple[str, ...]] = {
    "float64": (*_INTEGER, *_FLOAT),
    "float32": (*_INTEGER, *_FLOAT),
    "int64": _INTEGER,
    "int32": _INTEGER,
    "bool": ("BOOL",),
    "string": ("BYTES",),
    "category": ("BYTES", *_INTEGER, *_FLOAT, "BOOL"),
}


@dataclass
class Tensor:
    """One named tensor; ``data`` is a numpy array already in ``shape``."""

    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray
    parameters: dict[str, Any] = field(default_factory=dict)
    where: str = "$"  # where the tensor sits in the request, for error messages
    finite: bool = False  # known to hold no NaN or infinity (JSON numbers), so no one checks again


# A bound on one tensor's elements, checked from its shape before any data is read or allocated.
MAX_TENSOR_ELEMENTS = 1 << 24
# And on its dimensions: NumPy holds at most 32 (1.x) or 64 (2.x); [1] * 100 has one element but no array.
MAX_TENSOR_DIMS = 32


def element_count(shape: list[int]) -> int:
    return math.prod(shape)


def check_header(name: Any, datatype: Any, shape: Any, where: str) -> tuple[str, str, list[int]]:
    """Validate the name, datatype and shape fields common to JSON and gRPC tensors."""
    if not isinstance(name, str) or not name:
        raise InvalidInput("Expected a non-empty `string` name", f"{where}.name")
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise InvalidInput(
            f"unknown datatype {str(datatype)[:20]!r}; expected one of {', '.join(DATATYPES)}", f"{where}.datatype"
        )
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise InvalidInput("Expected `shape` as an array of non-negative integers", f"{where}.shape")
    if len(shape) > MAX_TENSOR_DIMS:
        raise InvalidInput(f"shape has more than {MAX_TENSOR_DIMS} dimensions", f"{where}.shape")
    # Those other than zero too, so a zero cannot carry dimensions numpy cannot hold: [0, 2**64], [0, 2**40, 2**40].
    if element_count(shape) > MAX_TENSOR_ELEMENTS or math.prod(d for d in shape if d) > MAX_TENSOR_ELEMENTS:
        raise InvalidInput(f"shape {shape[:8]} exceeds the limit of {MAX_TENSOR_ELEMENTS} elements", f"{where}.shape")
    return name, datatype, shape


_FLAT_FLOATS = list[float]
_ROWS_OF_FLOATS = list[list[float]]


def _fast_floats(data: Any, datatype: str, shape: list[int]) -> np.ndarray | None:
    """Flat or one-level nested numbers for FP32/FP64, checked in C (msgspec refuses booleans and strings);
    None sends anything else, and every error, to the element-by-element path, which names the element."""
    if datatype not in ("FP64", "FP32") or not isinstance(data, list) or not data:
        return None
    try:
        values = msgspec.convert(data, _ROWS_OF_FLOATS if isinstance(data[0], list) else _FLAT_FLOATS)
        array = np.asarray(values, dtype=DATATYPES[datatype])
    except (msgspec.ValidationError, ValueError):  # ValueError: ragged rows
        return None
    if array.size != element_count(shape) or not np.isfinite(array).all():
        return None
    return array.reshape(shape)


def from_json_data(data: Any, datatype: str, shape: list[int], where: str) -> np.ndarray:
    """Row-major flattened or nested JSON ``data`` -> an array of ``shape``, type-checked element by element."""
    fast = _fast_floats(data, datatype, shape)
    if fast is not None:
        return fast
    flat: list[Any] = []
    _flatten(data, flat, where, datatype)
    expected = element_count(shape)
    if len(flat) != expected:
        raise InvalidInput(f"shape {shape} holds {expected} elements but data has {len(flat)}", where)
    if datatype == "BYTES":
        for i, v in enumerate(flat):
            if not isinstance(v, str):
                raise InvalidInput(f"Expected `string` for BYTES, got `{type(v).__name__}`", f"{where}[{i}]")
        array = np.empty(len(flat), dtype=object)
        array[:] = flat
        return array.reshape(shape)
    # JSON has no NaN: a float tensor's missing value is null, read as NaN (refused where the model takes none)
    expected_type = (bool,) if datatype == "BOOL" else (int,) if datatype in _INTEGER else (int, float, type(None))
    for i, v in enumerate(flat):
        if type(v) not in expected_type:
            wanted = "boolean" if datatype == "BOOL" else "integer" if datatype in _INTEGER else "number"
            raise InvalidInput(f"Expected `{wanted}` for {datatype}, got `{type(v).__name__}`", f"{where}[{i}]")
    dtype = DATATYPES[datatype]
    if datatype in _INTEGER and flat:
        info = np.iinfo(dtype)
        low, high = min(flat), max(flat)
        if low < info.min or high > info.max:
            raise InvalidInput(f"value out of range for {datatype} [{info.min}, {info.max}]", where)
    try:
        with np.errstate(over="ignore"):
            array = np.asarray(flat, dtype=dtype)
    except OverflowError:  # an integer beyond even float64, such as 10**309
        raise InvalidInput(f"value out of range for {datatype}", where) from None
    if datatype in _FLOAT and np.isinf(array).any():  # JSON has no infinity, so this is overflow
        raise InvalidInput(f"value out of range for {datatype}", where)
    return array.reshape(shape)


def _flatten(data: Any, out: list[Any], where: str, datatype: str = "") -> None:
    if not isinstance(data, list):
        raise InvalidInput("Expected `data` as an array", where)
    for item in data:
        if isinstance(item, list):
            _flatten(item, out, where, datatype)
        elif item is None and datatype not in _FLOAT:
            carry = "only FP16, FP32 and FP64 tensors carry one"
            raise InvalidInput(f"null (a missing value) in {datatype or 'this'} data: {carry}", where)
        elif isinstance(item, dict):
            raise InvalidInput(f"Expected a scalar in `data`, got `{type(item).__name__}`", where)
        else:
            out.append(item)


def from_raw(raw: bytes, datatype: str, shape: list[int], where: str) -> np.ndarray:
    """The binary layout shared by the REST binary extension and gRPC ``raw_*_contents``."""
    count = element_count(shape)
    if datatype == "BYTES":
        items = _unpack_bytes(raw, where)
        if len(items) != count:
            raise InvalidInput(f"shape {shape} holds {count} elements but the raw data has {len(items)}", where)
        array = np.empty(count, dtype=object)
        array[:] = items
        return array.reshape(shape)
    dtype = DATATYPES[datatype]
    if len(raw) != count * dtype.itemsize:
        raise InvalidInput(
            f"shape {shape} of {datatype} needs {count * dtype.itemsize} bytes but the raw data has {len(raw)}", where
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _unpack_bytes(raw: bytes, where: str) -> list[bytes]:
    items, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InvalidInput("truncated BYTES element length", where)
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InvalidInput("truncated BYTES element", where)
        items.append(raw[offset : offset + length])
        offset += length
    return items


def to_raw(array: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        parts = []
        for item in array.reshape(-1):
            encoded = item if isinstance(item, bytes) else str(item).encode()
            parts.append(struct.pack("<I", len(encoded)))
            parts.append(encoded)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=DATATYPES[datatype]).tobytes()


def to_json_data(array: np.ndarray, datatype: str) -> list[Any]:
    """Row-major flattened JSON values; BYTES as text."""
    values: list[Any] = array.reshape(-1).tolist()
    if datatype == "BYTES":
        return [item if type(item) is str else _text(item) for item in values]
    return values


def _text(item: Any) -> str:
    return item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)
