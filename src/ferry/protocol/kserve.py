"""KServe v1: ``{"instances": [...]}`` in, ``{"predictions": [...]}`` out."""

from __future__ import annotations

from typing import Any

from ferry.errors import InvalidInput
from ferry.runtimes import Prediction
from ferry.serving.inputs import InputCodec


def decode_request(payload: Any, codec: InputCodec) -> Any:
    """Instances are records (objects) or rows (arrays, or strings for text and image models)."""
    if not isinstance(payload, dict):
        raise InvalidInput("Expected an object with `instances`", "$")
    key = "instances" if "instances" in payload else "inputs" if "inputs" in payload else None
    if key is None:
        raise InvalidInput("missing field 'instances'", "$.instances")
    instances = payload[key]
    where = f"$.{key}"
    if not isinstance(instances, list) or not instances:
        raise InvalidInput("Expected a non-empty array of instances", where)
    if isinstance(instances[0], dict):
        return codec.from_records(instances, where)
    return codec.from_rows(instances, where)


def encode_response(prediction: Prediction) -> dict[str, Any]:
    return {"predictions": prediction.values}
