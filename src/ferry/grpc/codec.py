"""Open Inference v2 over gRPC: ``ModelInferRequest`` in, ``ModelInferResponse`` out, as a codec for ``infer``."""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]

from ferry.errors import FerryError, InvalidInput
from ferry.grpc import inference_pb2 as pb
from ferry.grpc.wire import ReplyWriter, WireInfer, read_infer
from ferry.protocol import v2, v2_explain
from ferry.protocol.tensors import (
    CONTENTS_FIELD,
    DATATYPES,
    MAX_TENSOR_DIMS,
    MAX_TENSOR_ELEMENTS,
    Tensor,
    check_header,
    element_count,
    from_raw,
    to_raw,
)
from ferry.runtimes import Prediction
from ferry.runtimes.explain import Explanation
from ferry.serving.registry import ModelHandle

# FerryError status -> gRPC status code name (``grpc.StatusCode`` member).
STATUS_CODES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",
    408: "DEADLINE_EXCEEDED",
    413: "RESOURCE_EXHAUSTED",
    415: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def status_code(error: FerryError) -> str:
    return STATUS_CODES.get(error.status, "INTERNAL")


class GrpcCodec:
    protocol, route = "grpc", "grpc:ModelInfer"

    def __init__(self) -> None:
        self.reply = ReplyWriter()

    def status(self, error: FerryError | None) -> str:
        return "OK" if error is None else status_code(error)

    def decode(self, request: Any, handle: ModelHandle) -> tuple[Any, Any]:
        infer = decode_request(request)
        v2.check_requested(infer, handle, "outputs")
        return v2.to_batch(infer.inputs, handle), (infer, len(request.raw_input_contents) > 0)

    def explains(self, context: Any) -> bool:
        return v2_explain.wants_explanation(context[0], "parameters.explain")

    def encode(self, prediction: Prediction, handle: ModelHandle, context: Any) -> Any:
        infer, raw = context
        if isinstance(prediction, Explanation):  # ``parameters.explain``: ``v2_explain`` says what is added
            outputs, parameters = v2_explain.explained_outputs(prediction, handle, infer)
            response = encode_response(infer, handle, outputs, raw)
            for key, value in parameters.items():
                response.parameters[key].string_param = value
            return response
        if infer.outputs is None and not raw:  # the common reply: every output, typed, straight from the columns
            columns = v2.output_columns(prediction, handle)
            written = self.reply.write(infer, handle, columns)
            if written is not None:
                return written
            if all(column[1] in CONTENTS_FIELD for column in columns):
                return encode_columns(infer, handle, columns)
        return encode_response(infer, handle, v2.to_outputs(prediction, handle, infer), raw)


def parse_infer(message: bytes) -> Any:
    """A ModelInferRequest's bytes, parsed: read by hand if they take the common form (``wire.read_infer``),
    by protobuf otherwise (``DecodeError`` if they are not a ModelInferRequest)."""
    read = read_infer(message)
    return read if read is not None else pb.ModelInferRequest.FromString(message)


def _parameters(parameters: Any) -> dict[str, Any]:
    if not parameters:  # (most requests: no map to walk)
        return {}
    return {
        key: getattr(value, value.WhichOneof("parameter_choice") or "bool_param") for key, value in parameters.items()
    }


def decode_request(request: Any) -> v2.InferRequest:
    if type(request) is WireInfer:
        infer = _decode_wire(request)
        if infer is not None:
            return infer
        try:  # something the common path leaves to protobuf: its fields, read again, and their errors
            request = pb.ModelInferRequest.FromString(request.message)
        except DecodeError as exc:  # (``read_infer`` refuses what protobuf refuses: never reached, as a rule)
            raise InvalidInput(f"malformed ModelInferRequest: {exc}") from None
    raw = request.raw_input_contents
    tensors = request.inputs
    if raw and len(raw) != len(tensors):
        raise InvalidInput(f"{len(tensors)} inputs but {len(raw)} raw_input_contents", "raw_input_contents")
    inputs = []
    for i, tensor in enumerate(tensors):
        where = f"inputs[{i}]"
        dims = tensor.shape  # (one past the bound at most: a message may hold millions, and no array that many)
        name, datatype, shape = _header(tensor.name, tensor.datatype, list(dims[: MAX_TENSOR_DIMS + 1]), where)
        if raw:
            if tensor.contents.ListFields():  # the spec allows one or the other; never guess which wins
                raise InvalidInput("contents and raw_input_contents are both set; send one", f"{where}.contents")
            data = from_raw(raw[i], datatype, shape, f"raw_input_contents[{i}]")
        else:
            data = _from_contents(tensor.contents, datatype, shape, where)
        inputs.append(Tensor(name, datatype, shape, data, _parameters(tensor.parameters), where))
    requested = request.outputs
    v2.check_output_count(len(requested), "outputs")  # (before millions of them are made objects)
    outputs = [v2.RequestedOutput(o.name) for o in requested] if requested else None
    return v2.InferRequest(inputs, request.id or None, _parameters(request.parameters), outputs)


def _decode_wire(request: WireInfer) -> v2.InferRequest | None:
    """``decode_request`` for a request read by hand: the same tensors, checks and errors; None where the
    protobuf path would name an error or take something this does not (it then reads the message itself)."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        return None
    inputs = []
    for i, (name, datatype, shape, contents, values) in enumerate(request.inputs):
        where = f"inputs[{i}]"
        if len(shape) > MAX_TENSOR_DIMS:  # (the protobuf path reads one past the bound, and names that)
            return None
        name, datatype, shape = _header(name, datatype, shape, where)
        if raw:
            if contents:
                return None
            data = from_raw(raw[i], datatype, shape, f"raw_input_contents[{i}]")
        else:
            packed = _WIRE_FLOATS.get((datatype, contents))
            count = element_count(shape)
            if packed is None or len(values) != count * struct.calcsize(packed):
                return None
            data = np.frombuffer(values, DATATYPES[datatype]).reshape(shape)
            if count <= _FEW:  # known finite here: NumPy's check of a few values costs ~1.3 µs, their sum ~0.2
                finite = math.isfinite(sum(struct.unpack(f"<{count}{packed}", values)))
                inputs.append(Tensor(name, datatype, shape, data, {}, where, finite))
                continue
        inputs.append(Tensor(name, datatype, shape, data, {}, where))
    outputs = [v2.RequestedOutput(name) for name in request.outputs] if request.outputs else None
    return v2.InferRequest(inputs, request.id or None, {}, outputs)


_FLOATS = frozenset({"FP32", "FP64"})
_FEW = 64
# (datatype, InferTensorContents field) -> one value's layout, packed as protobuf packs that field
_WIRE_FLOATS = {("FP32", 6): "f", ("FP64", 7): "d"}


def _header(name: str, datatype: str, shape: list[int], where: str) -> tuple[str, str, list[int]]:
    """``check_header`` for a protobuf tensor, whose fields are already a str, a str and int64s: the usual
    tensor passes in C-speed checks; anything else gets the shared check, and its errors."""
    if (
        name
        and datatype in DATATYPES
        and shape
        and len(shape) <= MAX_TENSOR_DIMS
        and min(shape) > 0
        and math.prod(shape) <= MAX_TENSOR_ELEMENTS
    ):
        return name, datatype, shape
    return check_header(name, datatype, shape, where)


def _from_contents(contents: Any, datatype: str, shape: list[int], tensor: str) -> np.ndarray:
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidInput(f"{datatype} travels only in raw_input_contents", f"{tensor}.contents")
    values = getattr(contents, field)
    count = element_count(shape)
    if len(values) != count:
        raise InvalidInput(f"shape {shape} holds {count} elements but {field} has {len(values)}", f"{tensor}.contents")
    if datatype in _FLOATS:  # straight from protobuf's repeated field, not through a list (4x faster at 200)
        if count <= 64:  # (np.array on the field costs ~2 µs before its first value: fromiter, for few)
            return np.fromiter(values, DATATYPES[datatype], count).reshape(shape)
        return np.array(values, dtype=DATATYPES[datatype]).reshape(shape)
    values = list(values)  # (NumPy casts a repeated field's ints to a narrower type silently; a list's, never)
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = values
        return array.reshape(shape)
    try:
        return np.asarray(values, dtype=DATATYPES[datatype]).reshape(shape)
    except OverflowError:
        raise InvalidInput(f"value out of range for {datatype}", f"{tensor}.contents") from None


def encode_response(request: v2.InferRequest, handle: ModelHandle, outputs: list[Tensor], raw: bool) -> Any:
    """Raw output bytes when the client sent raw inputs (as Triton clients do), typed contents otherwise."""
    response = pb.ModelInferResponse(model_name=handle.name, model_version=handle.version, id=request.id or "")
    for tensor in outputs:
        entry = response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        if raw or tensor.datatype not in CONTENTS_FIELD:
            response.raw_output_contents.append(to_raw(tensor.data, tensor.datatype))
            continue
        _typed(entry, tensor.datatype, tensor.data.reshape(-1).tolist())
    return response


def encode_columns(request: v2.InferRequest, handle: ModelHandle, columns: list[v2.Column]) -> Any:
    """``encode_response``'s reply to a request naming no outputs, without raw inputs: every column typed."""
    response = pb.ModelInferResponse(model_name=handle.name, model_version=handle.version, id=request.id or "")
    for name, datatype, shape, values in columns:
        entry = response.outputs.add(name=name, datatype=datatype, shape=shape)
        _typed(entry, datatype, values if isinstance(values, list) else values.reshape(-1).tolist())
    return response


def _typed(entry: Any, datatype: str, values: list[Any]) -> None:
    if datatype == "BYTES":
        try:  # labels: all text, as a rule (map runs in C)
            values = list(map(str.encode, values))
        except TypeError:  # bytes among them, or other objects
            values = [v if isinstance(v, bytes) else str(v).encode() for v in values]
    getattr(entry.contents, CONTENTS_FIELD[datatype]).extend(values)


GRPC_CODEC = GrpcCodec()
