"""Open Inference v2 over REST: the JSON body and the binary tensor data extension.

With ``Inference-Header-Content-Length: N`` the first N bytes are the JSON header and the rest holds raw
tensors, each sized by its ``parameters.binary_data_size``; responses do the same for outputs asked for
with ``binary_data`` (per output) or ``binary_data_output`` (request-wide).
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
import numpy as np
import orjson

from ferry.errors import InvalidInput, MalformedRequest
from ferry.protocol.native import parse_json
from ferry.protocol.tensors import (
    MAX_TENSOR_DIMS,
    MAX_TENSOR_ELEMENTS,
    Tensor,
    check_header,
    from_json_data,
    from_raw,
    to_json_data,
    to_raw,
)
from ferry.protocol.v2 import Column, InferRequest, RequestedOutput

HEADER_LENGTH = "inference-header-content-length"
_ABSENT = object()


class _FloatTensor(msgspec.Struct):
    name: str
    datatype: Literal["FP64", "FP32"]
    shape: list[int]
    data: list[float]  # flat; msgspec refuses booleans, strings and numbers beyond a double
    parameters: dict[str, Any] | None = None


class _FloatRequest(msgspec.Struct):
    inputs: list[_FloatTensor]
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[Any] | None = None


_float_request = msgspec.json.Decoder(_FloatRequest)


def decode_request(body: bytes, header_length: str | None) -> InferRequest:
    """The request; the common all-JSON float request is checked in C first, anything else the long way."""
    if header_length is None:
        fast = _decode_floats(body)
        if fast is not None:
            return fast
    return _decode_any(body, header_length)


def _decode_floats(body: bytes) -> InferRequest | None:
    """Flat FP64/FP32 JSON tensors and nothing else to interpret (no parameters, no requested outputs),
    validated by a typed decoder. None sends every other request, and every error, the long way, which
    names the field; so this path only ever accepts what ``_decode_any`` accepts, with the same result."""
    try:
        request = _float_request.decode(body)
    except (msgspec.DecodeError, RecursionError):  # ValidationError included; nesting deep in an unknown field
        return None
    if request.parameters or request.outputs is not None or not request.inputs:
        return None
    inputs = []
    for i, raw in enumerate(request.inputs):
        shape, data = raw.shape, raw.data
        if raw.parameters or not raw.name or not data or len(shape) > MAX_TENSOR_DIMS:
            return None
        count = 1
        for d in shape:
            if d < 0 or d > MAX_TENSOR_ELEMENTS:
                return None
            count *= d
        if count != len(data) or count > MAX_TENSOR_ELEMENTS:
            return None
        # JSON holds no NaN or infinity and msgspec refuses numbers beyond a double, so only FP32 can overflow.
        if raw.datatype == "FP64":
            array = np.array(data, dtype=np.float64)
        else:
            with np.errstate(over="ignore"):
                array = np.array(data, dtype=np.float32)
            if not np.isfinite(array).all():
                return None
        where = f"$.inputs[{i}]"
        inputs.append(Tensor(raw.name, raw.datatype, shape, array.reshape(shape), {}, where, finite=True))
    return InferRequest(inputs, request.id, {}, None)


def _decode_any(body: bytes, header_length: str | None) -> InferRequest:
    binary = b""
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise MalformedRequest(
                f"Inference-Header-Content-Length {header_length[:20]!r} is not a length within the body"
            )
        size = int(header_length)
        body, binary = body[:size], body[size:]
    payload = parse_json(body)
    if not isinstance(payload, dict):
        raise InvalidInput("Expected an inference request object", "$")
    request_id = payload.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput("Expected `id` as a string", "$.id")
    parameters = _parameters(payload.get("parameters"), "$.parameters")
    _flag(parameters, "binary_data_output", "$.parameters")
    raw_inputs = payload.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("Expected `inputs` as a non-empty array of tensors", "$.inputs")
    inputs, offset = [], 0
    for i, raw in enumerate(raw_inputs):
        tensor, used = _input(raw, f"$.inputs[{i}]", binary, offset)
        inputs.append(tensor)
        offset += used
    if offset != len(binary):
        raise InvalidInput(f"{len(binary) - offset} bytes of binary data follow the inputs unclaimed", "$.inputs")
    return InferRequest(inputs, request_id, parameters, _requested(payload.get("outputs")))


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput("Expected `parameters` as an object", where)
    return value


def _flag(parameters: dict[str, Any], key: str, where: str) -> bool | None:
    """A boolean parameter of the binary extension: absent is None, anything but a boolean is the client's error."""
    flag = parameters.get(key, _ABSENT)
    if flag is _ABSENT:
        return None
    if not isinstance(flag, bool):
        raise InvalidInput(f"Expected `{key}` as a boolean", f"{where}.{key}")
    return flag


def _input(raw: Any, where: str, binary: bytes, offset: int) -> tuple[Tensor, int]:
    if not isinstance(raw, dict):
        raise InvalidInput("Expected a tensor object", where)
    name, datatype, shape = check_header(raw.get("name"), raw.get("datatype"), raw.get("shape"), where)
    parameters = _parameters(raw.get("parameters"), f"{where}.parameters")
    size = parameters.get("binary_data_size", _ABSENT)
    if size is not _ABSENT:
        if type(size) is not int or size < 0 or offset + size > len(binary):
            raise InvalidInput(
                f"binary_data_size {size!r} does not fit the {len(binary) - offset} bytes of binary data left",
                f"{where}.parameters.binary_data_size",
            )
        data = from_raw(binary[offset : offset + size], datatype, shape, f"{where}.parameters.binary_data_size")
        return Tensor(name, datatype, shape, data, parameters, where), size
    if "data" not in raw:
        raise InvalidInput("missing field 'data'", f"{where}.data")
    if datatype == "FP16":  # JSON numbers would be rounded in silence; the spec sends FP16 as binary only
        raise InvalidInput("FP16 travels only as binary data (parameters.binary_data_size)", f"{where}.datatype")
    data = from_json_data(raw["data"], datatype, shape, f"{where}.data")  # refuses overflow: JSON has no NaN
    # finite unless a null (a missing value) came in, read as NaN: the model's own rule then applies
    finite = data.dtype.kind != "f" or not np.isnan(data).any()
    return Tensor(name, datatype, shape, data, parameters, where, finite=finite), 0


def _requested(value: Any) -> list[RequestedOutput] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise InvalidInput("Expected `outputs` as an array", "$.outputs")
    out = []
    for i, item in enumerate(value):
        where = f"$.outputs[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInput("Expected an object with a string `name`", where)
        parameters = _parameters(item.get("parameters"), f"{where}.parameters")
        out.append(RequestedOutput(item["name"], _flag(parameters, "binary_data", f"{where}.parameters")))
    return out


def _response_head(request: InferRequest, model_name: str, model_version: str) -> dict[str, Any]:
    body: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request.id is not None:
        body["id"] = request.id
    return body


def all_json(request: InferRequest) -> bool:
    """Every output, each as JSON: the common response, which ``encode_json`` writes without tensors."""
    return request.outputs is None and not (request.parameters and request.parameters.get("binary_data_output") is True)


def encode_json(request: InferRequest, model_name: str, model_version: str, columns: list[Column]) -> bytes:
    """The same bytes ``encode_response`` writes for ``all_json`` requests, straight from the output columns."""
    body = _response_head(request, model_name, model_version)
    body["outputs"] = [
        {
            "name": name,
            "datatype": datatype,
            "shape": shape,
            "data": values if isinstance(values, list) else to_json_data(values, datatype),
        }
        for name, datatype, shape, values in columns
    ]
    return orjson.dumps(body)


def encode_response(
    request: InferRequest,
    model_name: str,
    model_version: str,
    outputs: list[Tensor],
    parameters: dict[str, Any] | None = None,
) -> tuple[bytes, dict[str, str]]:
    """The response body and its extra headers; binary outputs follow the JSON header in order."""
    wanted = {r.name: r.binary for r in request.outputs} if request.outputs else {}
    default_binary = request.parameters.get("binary_data_output") is True if request.parameters else False
    body = _response_head(request, model_name, model_version)
    if parameters:
        body["parameters"] = parameters
    encoded, chunks = [], []
    for tensor in outputs:
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}
        binary = wanted.get(tensor.name)
        if binary if binary is not None else default_binary:
            raw = to_raw(tensor.data, tensor.datatype)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = to_json_data(tensor.data, tensor.datatype)
        encoded.append(entry)
    body["outputs"] = encoded
    header = orjson.dumps(body)
    if not chunks:
        return header, {}
    return header + b"".join(chunks), {"Inference-Header-Content-Length": str(len(header))}
