"""MLflow's scoring protocol (``mlflow models serve``): a pandas-style body in, ``{"predictions": [...]}`` out.

``dataframe_split`` (columns and rows), ``dataframe_records`` (records), ``instances`` or ``inputs``
(records or rows). Columns are matched to features by name, in whatever order the client sends them; a model
from an MLflow folder without a signature takes any column names, by position, as MLflow does (``positional``).
"""

from __future__ import annotations

from typing import Any

from ferry.errors import InvalidInput
from ferry.runtimes import Prediction
from ferry.serving.inputs import InputCodec

FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")


def decode_request(body: Any, codec: InputCodec, positional: bool = False) -> Any:
    """The batch of an MLflow scoring request; errors name the field."""
    if not isinstance(body, dict):
        raise InvalidInput(f"Expected an object with one of {', '.join(FORMATS)}", "$")
    given = [key for key in FORMATS if key in body]
    if len(given) != 1:
        found = "none" if not given else ", ".join(given)
        raise InvalidInput(f"expected exactly one of {', '.join(FORMATS)}; got {found}", "$")
    key = given[0]
    value = body[key]
    if key == "dataframe_split":
        return _split(value, codec, positional)
    if isinstance(value, dict) and key == "inputs":  # column arrays: {"a": [1, 2], "b": [3, 4]}
        return _columns(value, codec, positional)
    if not isinstance(value, list) or not value:
        raise InvalidInput("Expected a non-empty array", f"$.{key}")
    if isinstance(value[0], dict):
        return _records(value, codec, positional, f"$.{key}")
    if codec.kind in ("text", "image") or isinstance(value[0], list):
        return codec.from_rows(value, f"$.{key}")
    return codec.from_rows([value], f"$.{key}")  # one bare row


def _records(records: list[Any], codec: InputCodec, positional: bool, where: str) -> Any:
    """Records by feature name; with ``positional``, records of other names as rows, in the first record's order."""
    first = records[0]
    if not positional or set(first) == codec.name_set:
        return codec.from_records(records, where)
    columns = list(first)
    rows = []
    for i, record in enumerate(records):
        if not isinstance(record, dict) or list(record) != columns:
            raise InvalidInput(f"expected the columns of the first record: {', '.join(columns)}", f"{where}[{i}]")
        rows.append(list(record.values()))
    return codec.from_rows(rows, where)


def _split(value: Any, codec: InputCodec, positional: bool) -> Any:
    if not isinstance(value, dict) or not isinstance(value.get("data"), list) or not value["data"]:
        raise InvalidInput("Expected {columns: [...], data: [[...], ...]}", "$.dataframe_split")
    columns = value.get("columns")
    if columns is None:
        return codec.from_rows(value["data"], "$.dataframe_split.data")
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise InvalidInput("Expected an array of column names", "$.dataframe_split.columns")
    records = []
    for i, row in enumerate(value["data"]):
        if not isinstance(row, list) or len(row) != len(columns):
            raise InvalidInput(f"expected {len(columns)} values, one per column", f"$.dataframe_split.data[{i}]")
        records.append(dict(zip(columns, row, strict=True)))
    if positional and set(columns) != codec.name_set:
        return codec.from_rows(value["data"], "$.dataframe_split.data")
    return codec.from_records(records, "$.dataframe_split.data")


def _columns(value: dict[str, Any], codec: InputCodec, positional: bool) -> Any:
    lengths = {len(v) if isinstance(v, list) else -1 for v in value.values()}
    if len(lengths) != 1 or -1 in lengths or 0 in lengths:
        raise InvalidInput("Expected columns as arrays of one length", "$.inputs")
    count = lengths.pop()
    return _records([{k: v[i] for k, v in value.items()} for i in range(count)], codec, positional, "$.inputs")


def encode_response(prediction: Prediction) -> dict[str, Any]:
    return {"predictions": prediction.values}
