"""Request shaping per wire protocol: one record (native JSON) in, (path, body) out; responses back to values.

Adapters never validate: an invalid record is shaped as faithfully as possible, so ``ferry check``
can send the same mistake through every protocol.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from ferry.errors import LoadTestUsage
from ferry.loadtest.schema import DTYPE_TO_V2, ModelSchema, TensorSpec, v2_datatype

PROTOCOLS = ("native", "v2", "v1", "seldon", "grpc")  # grpc: OIP ModelInfer (ferry.loadtest.grpc)


METHOD_PATH = "/inference.GRPCInferenceService/ModelInfer"


def dumps(value: Any) -> bytes:
    """JSON as a careless client writes it: NaN stays a bare ``NaN`` token, non-ASCII stays UTF-8."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass
class Adapter:
    protocol: str
    schema: ModelSchema
    v2_inputs: list[TensorSpec] | None = None  # the server's own v2 input tensors, when it publishes them

    def path(self) -> str:
        name = self.schema.name
        return {
            "native": f"/models/{name}/predict",
            "v1": f"/v1/models/{name}:predict",
            "v2": f"/v2/models/{name}/infer",
            "seldon": f"/seldon/{name}/api/v1.0/predictions",
            "grpc": METHOD_PATH,
        }[self.protocol]

    def encode(self, record: Any) -> bytes:
        if self.protocol == "native":
            return dumps(record)
        if self.protocol == "v1":
            return dumps({"instances": [record]})
        if self.protocol == "seldon":
            return dumps(self._seldon(record))
        if self.protocol == "grpc":
            return encode_infer(self.schema.name, self._v2(record))
        return dumps(self._v2(record))

    # -- Seldon: {"data": {"names": [...], "ndarray": [[...]]}} ---------------------------------------
    def _seldon(self, record: Any) -> dict[str, Any]:
        if self.schema.kind == "features" and isinstance(record, dict):
            return {"data": {"names": list(record), "ndarray": [list(record.values())]}}
        return {"data": {"ndarray": [_unwrap(record, self.schema)]}}

    # -- Open Inference v2: {"inputs": [{"name", "shape", "datatype", "data"}]} -------------------------
    def _v2(self, record: Any) -> dict[str, Any]:
        specs = self.v2_inputs or self.schema.inputs
        kind = self.schema.kind
        if kind == "features" and isinstance(record, dict) and len(specs) != 1:
            # one input per column, each of its own datatype (BYTES for text), as MLServer's pandas codec sends
            by_name = {s.name: s for s in specs}
            return {"inputs": [_v2_column(k, by_name.get(k), v) for k, v in record.items()]}
        spec = specs[0]
        if kind == "features" and isinstance(record, dict):
            row = list(record.values())
            return {"inputs": [{**_v2_tensor(spec.name, spec.dtype, row), "shape": [1, len(row)]}]}
        value = _unwrap(record, self.schema)
        if kind in ("text", "image"):
            return {"inputs": [_v2_tensor(spec.name, "string", [value])]}
        rows = [value]
        return {"inputs": [{**_v2_tensor(spec.name, spec.dtype, _flatten(rows)), "shape": _shape(rows)}]}

    def predictions(self, body: Any) -> list[Any]:
        """The per-row predictions in a successful response body, whatever the protocol."""
        if self.protocol == "native":
            if "prediction" in body:
                return [body["prediction"]]
            return list(body["predictions"])
        if self.protocol == "v1":
            return list(body["predictions"])
        if self.protocol == "seldon":
            data = body["data"]
            return list(data["ndarray"] if "ndarray" in data else data["tensor"]["values"])
        output = body["outputs"][0]
        data, shape = output["data"], output["shape"]
        if len(shape) <= 1:
            return list(data)
        width = math.prod(shape[1:])
        return [data[i * width : (i + 1) * width] for i in range(shape[0])]


def _unwrap(record: Any, schema: ModelSchema) -> Any:
    """A text/image/tensor record ``{field: value}`` as its bare value (what row-wise protocols carry)."""
    key = schema.field if schema.kind in ("text", "image") else schema.inputs[0].name
    if isinstance(record, dict) and len(record) == 1 and key in record:
        return record[key]
    return record


def _v2_tensor(name: str, dtype: str, data: list[Any]) -> dict[str, Any]:
    return {"name": name, "shape": [len(data)], "datatype": DTYPE_TO_V2.get(dtype, "FP64"), "data": data}


def _v2_column(name: str, spec: TensorSpec | None, value: Any) -> dict[str, Any]:
    """One row of one column: shape [1], or [1, 1] where the server declares the column [-1, 1]."""
    shape = [1, *spec.shape[1:]] if spec is not None and len(spec.shape) > 1 else [1]
    datatype = v2_datatype(spec) if spec is not None else _guess(value)
    return {"name": name, "shape": shape, "datatype": datatype, "data": [value]}


def _guess(value: Any) -> str:
    return "BYTES" if isinstance(value, str) else "BOOL" if isinstance(value, bool) else "FP64"


def _flatten(value: Any) -> list[Any]:
    if isinstance(value, list):
        return [x for item in value for x in _flatten(item)]
    return [value]


def _shape(value: Any) -> list[int]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        value = value[0] if value else None
    return shape


def make_adapter(protocol: str, schema: ModelSchema, v2_inputs: list[TensorSpec] | None = None) -> Adapter:
    if protocol not in PROTOCOLS:
        raise LoadTestUsage(f"unknown protocol '{protocol}'; expected one of {', '.join(PROTOCOLS)}")
    return Adapter(protocol, schema, v2_inputs)


def encode_infer(model: str, v2_request: dict[str, Any]) -> bytes:
    """An OIP v2 JSON request (``{"inputs": [...]}``) as serialised ``ModelInferRequest`` bytes."""
    from ferry.grpc import inference_pb2 as pb  # protobuf only where gRPC is asked for
    from ferry.protocol.tensors import CONTENTS_FIELD

    request = pb.ModelInferRequest(model_name=model)
    for tensor in v2_request["inputs"]:
        datatype = tensor["datatype"]
        field = CONTENTS_FIELD.get(datatype, "fp64_contents")
        entry = request.inputs.add(name=tensor["name"], datatype=datatype, shape=tensor["shape"])
        data = tensor["data"]
        if datatype == "BYTES":
            data = [v.encode() if isinstance(v, str) else bytes(v) for v in data]
        getattr(entry.contents, field).extend(data)
    return bytes(request.SerializeToString())
