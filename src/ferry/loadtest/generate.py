"""Random inputs from a model's schema: valid ones within its types and shapes, and typical mistakes."""

from __future__ import annotations

import base64
import random
import struct
import zlib
from typing import Any

from ferry.loadtest.schema import ModelSchema, TensorSpec

_WORDS = ["映像", "音楽", "脚本", "最高", "退屈", "感動", "good", "plot", "actors", "slow", "😊", "ending"]


def valid_record(schema: ModelSchema, rng: random.Random) -> Any:
    """One record in Ferry's native form: ``{feature: value}``, ``{tensor: row}`` or ``{field: text}``."""
    if schema.kind == "features":
        sample = schema.sample_input if isinstance(schema.sample_input, dict) else {}
        return {s.name: _column_value(s, rng, sample.get(s.name)) for s in schema.inputs}
    if schema.kind == "text":
        limit = min(schema.max_length or 200, 200)
        words = [rng.choice(_WORDS) for _ in range(rng.randint(1, 12))]
        return {schema.field: "".join(words)[:limit] or "x"}
    if schema.kind == "image":
        return {schema.field: base64.b64encode(tiny_png(rng.randint(1, 8), rng.randint(1, 8))).decode()}
    spec = schema.inputs[0]
    row_shape = [d if d > 0 else rng.randint(1, 4) for d in spec.shape[1:]] or [rng.randint(1, 4)]
    return {spec.name: _tensor(row_shape, spec.dtype, rng)}


def _column_value(spec: TensorSpec, rng: random.Random, sample: Any) -> Any:
    """A value the column takes: one of a categorical's categories; for text and integers, which an encoder may
    know only some of, the sample's own value (one the model answered at build); numbers vary around the sample."""
    if spec.dtype == "category" and spec.categories:
        return rng.choice(spec.categories)
    if spec.dtype in ("string", "category") and isinstance(sample, str):
        return sample
    if spec.dtype.startswith("int") and type(sample) is int:
        return sample
    return _scalar(spec.dtype, rng, sample)


def _scalar(dtype: str, rng: random.Random, near: Any = None) -> Any:
    if dtype.startswith("float"):
        if isinstance(near, int | float) and not isinstance(near, bool) and near:
            return round(near * rng.uniform(0.5, 1.5), 4)
        return round(rng.uniform(0.0, 10.0), 4)
    if dtype.startswith("int"):
        return rng.randint(0, 10)
    if dtype == "bool":
        return rng.random() < 0.5
    return rng.choice(_WORDS)


def _tensor(shape: list[int], dtype: str, rng: random.Random) -> Any:
    if len(shape) == 1:
        return [_scalar(dtype, rng) for _ in range(shape[0])]
    return [_tensor(shape[1:], dtype, rng) for _ in range(shape[0])]


def tiny_png(width: int, height: int) -> bytes:
    """A valid grey PNG, built by hand so no imaging library is needed."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + bytes([128] * width) for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def invalid_records(schema: ModelSchema, rng: random.Random) -> list[tuple[str, Any]]:
    """(case name, record) pairs that a correct service must refuse with a 4xx."""
    good = valid_record(schema, rng)
    cases: list[tuple[str, Any]] = [("wrong type: top level is a number", 42)]
    first = next(iter(good))
    if schema.kind == "features":
        spec = schema.inputs[0]
        wrong = "not a number" if spec.dtype != "string" else [1, 2]
        cases.append((f"wrong type: '{spec.name}' is {type(wrong).__name__}", {**good, spec.name: wrong}))
        cases.append((f"missing field '{spec.name}'", {k: v for k, v in good.items() if k != spec.name}))
        nan_spec = _nan_target(schema.inputs)
        if nan_spec is not None:
            cases.append((f"NaN in '{nan_spec.name}'", {**good, nan_spec.name: float("nan")}))
            cases.append((f"null in '{nan_spec.name}'", {**good, nan_spec.name: None}))
    else:
        cases.append((f"wrong type: '{first}' is an object", {first: {"nested": True}}))
        cases.append((f"missing field '{first}'", {}))
    if schema.kind == "tensor":
        spec = schema.inputs[0]
        fixed = [d for d in spec.shape[1:] if d > 0]
        bad_row = _tensor([fixed[0] + 1], spec.dtype, rng) if fixed else [[1.0], [2.0, 3.0]]
        cases.append(("bad shape: wrong row length" if fixed else "bad shape: ragged rows", {first: bad_row}))
        if _nan_target(schema.inputs) is not None:
            row = good[first]
            cases.append(("NaN in the tensor", {first: _replace_first(row, float("nan"))}))
    if schema.kind == "features":
        cases.append(("bad shape: a row with one value too many", [*good.values(), 1.0]))
    if schema.kind == "text" and schema.max_length:
        cases.append((f"text longer than max_length {schema.max_length}", {first: "x" * (schema.max_length + 1)}))
    if schema.kind == "image":
        cases.append(("image is not base64", {first: "%%% not base64 %%%"}))
    cases.append(("extra field '__ferry_extra__'", {**good, "__ferry_extra__": 1} if isinstance(good, dict) else good))
    return cases


def _nan_target(specs: list[TensorSpec]) -> TensorSpec | None:
    return next((s for s in specs if s.dtype.startswith("float") and not s.allow_nan), None)


def _replace_first(value: Any, new: Any) -> Any:
    if isinstance(value, list) and value:
        return [_replace_first(value[0], new), *value[1:]]
    return new
