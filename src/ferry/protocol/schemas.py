"""Each codec's request body for one model, as the OpenAPI 3.0 schema of exactly what its validation accepts.

The schemas are built from the manifest's input schema, so a client (or a fuzzer) that follows them is
never refused, and a body they exclude is refused with a 400. Two rules JSON Schema cannot state are
left to the descriptions, and the schemas keep to the side of them that is always accepted:

- a tensor's ``shape`` fixes how many values ``data`` holds: the v2 and Seldon ``tensor`` schemas
  describe one row (``shape`` ``[1, ...]``); any batch works with its shape;
- rows of a tensor input whose width is free (``-1``) must all have one length.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ferry.bundle.manifest import InputSchema
from ferry.protocol.tensors import ACCEPTS, DATATYPES, FERRY_DATATYPES
from ferry.serving.inputs import MAX_STRING_LENGTH

Schema = dict[str, Any]

# A float64 value is any JSON number a double holds ("format: double"), with no written bound: the shortest
# decimal of the largest double is below its exact value, so a validator reading the bound as a decimal would
# refuse integers the server rightly takes. float32 keeps its bound, or generators draw numbers it cannot hold.
_DOUBLE: Schema = {"type": "number", "format": "double"}
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _bounded(type_: str, limit: float | int, low: float | int | None = None) -> Schema:
    return {"type": type_, "minimum": -limit if low is None else low, "maximum": limit}


def value(dtype: str, allow_nan: bool = False) -> Schema:
    """One JSON value of a feature or tensor element of a manifest dtype; ``null`` is NaN where allowed."""
    if dtype == "float64":
        schema = dict(_DOUBLE)
    elif dtype == "float32":
        schema = {**_bounded("number", _FLOAT32_MAX), "format": "float"}
    elif dtype.startswith("int"):
        info = np.iinfo(dtype)
        schema = _bounded("integer", int(info.max), int(info.min))
    elif dtype == "bool":
        schema = {"type": "boolean"}
    else:
        schema = {"type": "string"}
    if allow_nan and dtype.startswith("float"):
        schema["nullable"] = True
    return schema


def _array(items: Schema, length: int | None = None, min_items: int = 0) -> Schema:
    schema: Schema = {"type": "array", "items": items}
    if length is not None and length >= 0:
        schema["minItems"] = schema["maxItems"] = length
    elif min_items:
        schema["minItems"] = min_items
    return schema


def _one_of(*schemas: Schema) -> Schema:
    return schemas[0] if len(schemas) == 1 else {"oneOf": list(schemas)}


def _text(schema: InputSchema) -> Schema:
    limit = schema.max_length or MAX_STRING_LENGTH
    if schema.kind == "image":
        return {"type": "string", "format": "byte", "maxLength": limit}
    return {"type": "string", "maxLength": limit}


def _tensor_key(schema: InputSchema) -> str:
    return schema.tensors[0].name if schema.kind == "tensor" else schema.field


def record(schema: InputSchema) -> Schema:
    """One object: every feature by name and nothing else, or ``{field: value}`` for a text, image or tensor input."""
    if schema.kind == "features":
        properties = {f.name: value(f.dtype, f.allow_nan) for f in schema.features}
    else:
        properties = {_tensor_key(schema): row(schema) if schema.kind == "tensor" else _text(schema)}
    return {"type": "object", "required": list(properties), "properties": properties, "additionalProperties": False}


def row(schema: InputSchema) -> Schema:
    """One bare row: the features in manifest order, a tensor's row (nested by its shape), or a text."""
    if schema.kind in ("text", "image"):
        return _text(schema)
    if schema.kind == "features":
        dtypes = {f.dtype for f in schema.features}
        allow_nan = any(f.allow_nan for f in schema.features)
        items = value(dtypes.pop(), allow_nan) if len(dtypes) == 1 else {"anyOf": [value(d) for d in sorted(dtypes)]}
        return _array(items, len(schema.features))
    tensor = schema.tensors[0]
    dims = tensor.shape[1:] or [1]
    element = value(tensor.dtype, tensor.allow_nan)
    for size in reversed(dims):
        element = _array(element, size)
    return element


def batch(schema: InputSchema) -> list[Schema]:
    """A non-empty list of records, or of rows (where a width is free, rows must still have one length)."""
    return [_array(record(schema), min_items=1), _array(row(schema), min_items=1)]


def native_body(schema: InputSchema) -> Schema:
    """``POST /models/{name}/predict``: a record, a bare row (or a text), a batch, or ``{"instances": batch}``."""
    forms = [record(schema), *_lone(schema), *batch(schema)]
    if schema.kind != "features" or "instances" not in {f.name for f in schema.features}:
        instances = {"type": "object", "required": ["instances"], "properties": {"instances": _one_of(*batch(schema))}}
        forms.append(instances)
    return {"oneOf": forms}


def _lone(schema: InputSchema) -> list[Schema]:
    """One row sent alone: a list of scalars (only where rows are flat: a nested row reads as a batch), or a text."""
    if schema.kind in ("text", "image"):
        return [_text(schema)]
    one = row(schema)
    if one["items"].get("type") == "array":
        return []
    return [{**one, "minItems": max(one.get("minItems", 1), 1)}]


def kserve_body(schema: InputSchema) -> Schema:
    """KServe v1: ``instances`` (or ``inputs``, read only without ``instances``): records or rows."""
    instances = _one_of(*batch(schema))
    return {
        "oneOf": [
            {"type": "object", "required": ["instances"], "properties": {"instances": instances}},
            {
                "type": "object",
                "required": ["inputs"],
                "properties": {"inputs": instances},
                "not": {"required": ["instances"]},
            },
        ]
    }


def seldon_body(schema: InputSchema) -> Schema:
    """A SeldonMessage of exactly one form: ``data``, ``strData`` (text), ``jsonData``, ``binData`` (image)."""
    meta = {"type": "object", "nullable": True}
    forms: list[Schema] = [{"required": ["data"], "properties": {"data": _seldon_data(schema), "meta": meta}}]
    if schema.kind == "text":
        forms.append({"required": ["strData"], "properties": {"strData": _text(schema), "meta": meta}})
    forms.append({"required": ["jsonData"], "properties": {"jsonData": native_body(schema), "meta": meta}})
    if schema.kind == "image":
        forms.append({"required": ["binData"], "properties": {"binData": _text(schema), "meta": meta}})
    others = ["data", "strData", "jsonData", "binData"]
    for form in forms:
        form["type"] = "object"
        form["not"] = {"anyOf": [{"required": [o]} for o in others if o != form["required"][0]]}
    return {"oneOf": forms}


def _seldon_data(schema: InputSchema) -> Schema:
    """``data``: ``names`` and one of ``ndarray`` (rows, or one bare row) and ``tensor`` (one row)."""
    if schema.kind == "features":
        features = [f.name for f in schema.features]
        # Every feature exactly once, in any order (n distinct names out of n), or no names at all.
        names: Schema = {
            "type": "array",
            "nullable": True,
            "items": {"type": "string", "enum": features},
            "uniqueItems": True,
            "oneOf": [{"maxItems": 0}, {"minItems": len(features)}],
        }
    else:
        names = {"type": "array", "nullable": True, "items": {"type": "string"}}
    if schema.kind in ("text", "image"):
        text = _text(schema)
        ndarray = _array({"oneOf": [text, _array(text, 1)]}, min_items=1)
    else:
        ndarray = _one_of(*_lone(schema), _array(row(schema), min_items=1))
    return {
        "type": "object",
        "properties": {"names": names, "ndarray": ndarray, "tensor": _seldon_tensor(schema)},
        "oneOf": [
            {"required": ["ndarray"], "not": {"required": ["tensor"]}},
            {"required": ["tensor"], "not": {"required": ["ndarray"]}},
        ],
    }


def _seldon_tensor(schema: InputSchema) -> Schema:
    """One row as ``{shape, values}``: ``shape`` ``[w]`` or ``[1, w]`` and its ``w`` values."""
    width = _row_width(schema)
    if schema.kind in ("text", "image"):
        element = _text(schema)
    elif schema.kind == "tensor":
        element = value(schema.tensors[0].dtype, schema.tensors[0].allow_nan)
    else:
        dtypes = {f.dtype for f in schema.features}
        element = value(dtypes.pop()) if len(dtypes) == 1 else {"anyOf": [value(d) for d in sorted(dtypes)]}
    return {
        "type": "object",
        "required": ["shape", "values"],
        "properties": {"shape": {"type": "array", "enum": [[width], [1, width]]}, "values": _array(element, width)},
    }


# -- MLflow's scoring protocol ---------------------------------------------------------------------------
def mlflow_body(schema: InputSchema) -> Schema:
    """Exactly one of ``dataframe_split``, ``dataframe_records``, ``instances`` and ``inputs``.

    ``inputs`` as column arrays is shown for a one-column input; with several, the columns must also be of
    one length, which JSON Schema cannot state.
    """
    listed = (
        _one_of(*batch(schema), *_lone(schema)) if schema.kind in ("features", "tensor") else _one_of(*batch(schema))
    )
    inputs = _one_of(listed, columns) if (columns := _columns(schema)) else listed
    forms = {
        "dataframe_split": _split(schema),
        "dataframe_records": listed,
        "instances": listed,
        "inputs": inputs,
    }
    return {
        "oneOf": [
            {
                "type": "object",
                "required": [key],
                "properties": {key: form},
                "not": {"anyOf": [{"required": [other]} for other in forms if other != key]},
            }
            for key, form in forms.items()
        ]
    }


def _split(schema: InputSchema) -> Schema:
    """``{"data": rows}``, or ``{"columns": names, "data": rows}`` with the columns named in any order."""
    unnamed = {
        "type": "object",
        "required": ["data"],
        "properties": {
            "data": _array(row(schema), min_items=1),
            "columns": {"type": "string", "nullable": True, "enum": [None]},
        },
    }
    named_record = record(schema)
    names = list(named_record["properties"])
    cells = list(named_record["properties"].values())
    cell = cells[0] if all(c == cells[0] for c in cells) else {"anyOf": cells}
    named = {
        "type": "object",
        "required": ["columns", "data"],
        "properties": {
            "columns": {**_array({"type": "string", "enum": names}, len(names)), "uniqueItems": True},
            "data": _array(_array(cell, len(names)), min_items=1),
        },
    }
    return {"oneOf": [unnamed, named]}


def _columns(schema: InputSchema) -> Schema | None:
    """``{"column": [values...]}`` for an input of one column (a feature, a text field or a tensor)."""
    one = record(schema)
    if len(one["properties"]) != 1:
        return None
    ((name, cell),) = one["properties"].items()
    return {**one, "properties": {name: _array(cell, min_items=1)}}


def _row_width(schema: InputSchema) -> int:
    """How many values one row holds (a free dimension counts as one)."""
    if schema.kind == "features":
        return len(schema.features)
    if schema.kind == "tensor":
        return int(np.prod([d if d >= 0 else 1 for d in schema.tensors[0].shape[1:]] or [1]))
    return 1


# -- Open Inference v2 ---------------------------------------------------------------------------------------
def _datatype_values(datatype: str) -> Schema:
    """One JSON element of a v2 tensor of ``datatype``, with the range the datatype holds."""
    if datatype == "BOOL":
        return {"type": "boolean"}
    if datatype == "BYTES":
        return {"type": "string"}
    dtype = DATATYPES[datatype]
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return _bounded("integer", int(info.max), int(info.min))
    if datatype == "FP32":  # a larger number still rounds to the largest float32; from 2**128 - 2**103 on, infinity
        return {**_bounded("number", float(np.nextafter(2.0**128 - 2.0**103, 0))), "format": "float"}
    return dict(_DOUBLE)  # FP64 (FP16 travels only as binary)


def v2_tensor(name: str | Schema, dtype: str, shape: list[int], max_length: int | None = None) -> Schema:
    """One input tensor as JSON: its name, a datatype that converts without loss, ``shape`` and ``data``.

    ``shape`` is one row (``[1, ...]``, free dimensions as 1); ``data`` holds its values flat or nested.
    FP16 is left out: it travels only as binary data.
    """
    count = int(np.prod(shape))
    variants = []
    for datatype in ACCEPTS[dtype]:
        if datatype == "FP16":
            continue
        element = _datatype_values(datatype)
        if datatype == "BYTES" and max_length is not None:
            element = {**element, "maxLength": max_length}
        nested = element
        for size in reversed(shape):
            nested = _array(nested, size)
        variants.append(
            {
                "type": "object",
                "required": ["name", "datatype", "shape", "data"],
                "properties": {
                    "name": {"type": "string", "enum": [name]} if isinstance(name, str) else name,
                    "datatype": {"type": "string", "enum": [datatype]},
                    "shape": {"type": "array", "items": {"type": "integer"}, "enum": [shape]},
                    "data": _one_of(_array(element, count), nested) if len(shape) > 1 else _array(element, count),
                    "parameters": {"type": "object", "nullable": True, "not": {"required": ["binary_data_size"]}},
                },
            }
        )
    return _one_of(*variants)


def v2_body(
    schema: InputSchema,
    inputs: list[dict[str, Any]],
    outputs: list[str],
    any_name: bool = False,
    matrix_names: tuple[str, ...] = ("input",),
) -> Schema:
    """An inference request for this model: its inputs as its metadata names them, and its outputs by name.

    ``inputs`` are the model's v2 input specs (``ferry.protocol.v2.input_specs``). A tabular model with one
    dtype also takes one ``[-1]`` tensor per feature; the schema shows that form for a one-feature model.
    ``matrix_names``: the names a tabular model's matrix goes by; with ``any_name``, any name that is not a
    feature's (MLServer's rule).
    """
    tensors = [_one_row_tensor(spec, schema, any_name, matrix_names) for spec in inputs]
    if schema.kind == "features" and len(inputs) == 1 and len(schema.features) == 1:
        feature = schema.features[0]
        tensors.append(
            _one_of(v2_tensor(feature.name, feature.dtype, [1]), v2_tensor(feature.name, feature.dtype, [1, 1]))
        )
    if len(inputs) == 1:
        items: Schema = _array(_one_of(*tensors), 1)
    else:  # one tensor per feature, each once: n distinct tensors out of n
        items = {**_array({"oneOf": tensors}, len(tensors)), "uniqueItems": True}
    requested = {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string", "enum": outputs},
            "parameters": {"type": "object", "nullable": True, "properties": {"binary_data": {"type": "boolean"}}},
        },
    }
    return {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string", "nullable": True},
            "parameters": {
                "type": "object",
                "nullable": True,
                "properties": {"binary_data_output": {"type": "boolean"}},
            },
            "inputs": items,
            "outputs": {"type": "array", "nullable": True, "items": requested},
        },
    }


def _one_row_tensor(spec: dict[str, Any], schema: InputSchema, any_name: bool, matrix_names: tuple[str, ...]) -> Schema:
    shape = [1, *(d if d >= 0 else 1 for d in spec["shape"][1:])]
    dtype = next(k for k, v in FERRY_DATATYPES.items() if v == spec["datatype"])
    if schema.kind == "features" and len(schema.features) > 1 and len(spec["shape"]) == 1:
        shape = [1]  # one of several per-feature tensors
    max_length = (schema.max_length or MAX_STRING_LENGTH) if schema.kind in ("text", "image") else None
    name: str | Schema = spec["name"]
    if schema.kind == "features" and len(spec["shape"]) == 2:  # the matrix, not a feature's tensor
        name = {"type": "string", "enum": list(matrix_names)}
        if any_name:
            name = {"type": "string", "minLength": 1, "not": {"enum": [f.name for f in schema.features]}}
    return v2_tensor(name, dtype, shape, max_length)
