"""The Seldon protocol: a SeldonMessage in, a SeldonMessage of the same form out.

``data`` carries ``names`` and either ``ndarray`` or ``tensor`` (``shape``, ``values``); ``strData``,
``jsonData`` and ``binData`` are the other forms. ``meta`` is echoed.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import orjson

from ferry.errors import InvalidInput
from ferry.protocol.native import decode_native, encode_native
from ferry.runtimes import Prediction
from ferry.serving.inputs import InputCodec

Form = Literal["ndarray", "tensor", "strData", "jsonData", "binData"]
FORMS: tuple[Form, ...] = ("strData", "jsonData", "binData")
_PAYLOADS = ("data", *FORMS)


@dataclass
class SeldonRequest:
    batch: Any
    form: Form
    names: list[str] = field(default_factory=list)
    meta: Any = None
    single: bool = False  # jsonData that held one record


def decode_request(payload: Any, codec: InputCodec) -> SeldonRequest:
    if not isinstance(payload, dict):
        raise InvalidInput("Expected a SeldonMessage object", "$")
    meta = payload.get("meta")
    if meta is not None and not isinstance(meta, dict):
        raise InvalidInput("Expected `meta` as an object", "$.meta")
    given = [form for form in _PAYLOADS if form in payload]
    if len(given) > 1:  # a oneof in Seldon's proto: never guess which one the client meant
        raise InvalidInput(f"send one of `data`, `strData`, `jsonData` or `binData`; got {', '.join(given)}", "$")
    if "data" in payload:
        return _data(payload["data"], codec, meta)
    if "strData" in payload:
        text = payload["strData"]
        if not isinstance(text, str):
            raise InvalidInput("Expected `strData` as a string", "$.strData")
        if codec.kind != "text":
            raise InvalidInput(f"strData needs a text model; this model takes {codec.kind}", "$.strData")
        return SeldonRequest(codec.from_rows([text], "$.strData"), "strData", meta=meta)
    if "jsonData" in payload:
        batch, single = decode_native(payload["jsonData"], codec)
        return SeldonRequest(batch, "jsonData", meta=meta, single=single)
    if "binData" in payload:
        if codec.kind != "image" or not isinstance(payload["binData"], str):
            raise InvalidInput("binData needs an image model and base64 text", "$.binData")
        try:
            image = base64.b64decode(payload["binData"], validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput("not valid base64", "$.binData") from None
        return SeldonRequest([image], "binData", meta=meta)
    raise InvalidInput("Expected one of `data`, `strData`, `jsonData` or `binData`", "$")


def _data(data: Any, codec: InputCodec, meta: Any) -> SeldonRequest:
    if not isinstance(data, dict):
        raise InvalidInput("Expected `data` as an object", "$.data")
    names = data.get("names")
    if names is None:
        names = []
    elif not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise InvalidInput("Expected `names` as an array of strings", "$.data.names")
    form: Form
    if "ndarray" in data and "tensor" in data:  # a oneof in Seldon's proto too: never drop one in silence
        raise InvalidInput("send one of `ndarray` or `tensor` in `data`; got both", "$.data")
    if "ndarray" in data:
        rows, form, where = data["ndarray"], "ndarray", "$.data.ndarray"
        if not isinstance(rows, list) or not rows:
            raise InvalidInput("Expected a non-empty array", where)
    elif "tensor" in data:
        rows, form, where = _tensor_rows(data["tensor"]), "tensor", "$.data.tensor.values"
    else:
        raise InvalidInput("Expected `ndarray` or `tensor` in `data`", "$.data")
    if codec.kind in ("text", "image"):
        flat = [r[0] if isinstance(r, list) and len(r) == 1 else r for r in rows]
        return SeldonRequest(codec.from_rows(flat, where), form, names, meta)
    if all(not isinstance(r, list) for r in rows):
        rows = [rows]  # one bare row
    if codec.kind == "features" and names:
        order = _column_order(names, codec)
        rows = [[r[j] for j in order] if isinstance(r, list) and len(r) == len(order) else r for r in rows]
    return SeldonRequest(codec.from_rows(rows, where), form, names, meta)


def _column_order(names: list[str], codec: InputCodec) -> list[int]:
    """Where each of the model's features is among the columns ``names`` names; every name must be a feature."""
    seen: set[str] = set()
    for i, name in enumerate(names):
        where = f"$.data.names[{i}]"
        if name in seen:
            raise InvalidInput(f"column '{name}' is named twice", where)
        if name not in codec.name_set:
            raise InvalidInput(f"unknown column '{name}'; expected {', '.join(codec.feature_names)}", where)
        seen.add(name)
    missing = [n for n in codec.feature_names if n not in seen]
    if missing:
        raise InvalidInput(f"missing column '{missing[0]}'; expected {', '.join(codec.feature_names)}", "$.data.names")
    return [names.index(n) for n in codec.feature_names]


def _tensor_rows(tensor: Any) -> list[Any]:
    if not isinstance(tensor, dict):
        raise InvalidInput("Expected `tensor` as an object with `shape` and `values`", "$.data.tensor")
    shape, values = tensor.get("shape"), tensor.get("values")
    if not isinstance(shape, list) or not shape or not all(type(d) is int and d > 0 for d in shape):
        raise InvalidInput("Expected `shape` as a non-empty array of positive integers", "$.data.tensor.shape")
    if not isinstance(values, list) or any(isinstance(v, list | dict) for v in values):
        raise InvalidInput("Expected `values` as a flat array", "$.data.tensor.values")
    size = math.prod(shape)  # Python integers: a shape such as [2**32, 2**32] cannot wrap around to 0
    if size != len(values):
        raise InvalidInput(f"shape {shape} holds {size} values but `values` has {len(values)}", "$.data.tensor.values")
    if len(shape) == 1:
        return [values]
    rows: list[Any] = np.asarray(values, dtype=object).reshape(shape).tolist()
    return rows


def encode_response(request: SeldonRequest, prediction: Prediction, labels: list[str] | None) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if request.meta is not None:
        body["meta"] = _echo(request.meta)
    if request.form == "jsonData":
        body["jsonData"] = encode_native(prediction, request.single, labels)
        return body
    if request.form == "strData" and np.asarray(prediction.values).dtype.kind in "OUS":
        body["strData"] = str(prediction.values[0])
        return body
    names, values = _named_values(request, prediction, labels)
    if request.form == "tensor" and values.dtype.kind in "biuf":
        body["data"] = {"names": names, "tensor": {"shape": list(values.shape), "values": values.ravel().tolist()}}
    else:
        body["data"] = {"names": names, "ndarray": values.tolist()}
    return body


def _echo(meta: dict[str, Any]) -> orjson.Fragment:
    """``meta`` as the client sent it; the standard library writes what orjson cannot (integers beyond 64 bits)."""
    try:
        return orjson.Fragment(orjson.dumps(meta))
    except TypeError:
        return orjson.Fragment(json.dumps(meta).encode())


def _named_values(request: SeldonRequest, prediction: Prediction, labels: list[str] | None) -> tuple[list[str], Any]:
    """Classifier probabilities named by class (Seldon's convention), else the predictions themselves."""
    probabilities = prediction.probabilities
    if probabilities is not None and labels and probabilities.shape[1] == len(labels):
        return list(labels), np.asarray(probabilities)
    values = np.asarray(prediction.values)
    if values.ndim == 1:
        return ["label" if values.dtype.kind in "OUS" else "prediction"], values
    width = values.shape[-1]
    names = request.names if len(request.names) == width else [f"t:{i}" for i in range(width)]
    return names, values
