"""Every protocol as a codec around the one ``DataPlane.infer``: decode a message, encode a prediction.

An HTTP codec reads an ``HttpMessage`` (body, headers, query) and answers ``(content, headers)``;
the gRPC codec (``ferry.grpc.codec``) reads and answers protobuf messages. ``CODECS`` is the
table of the codecs that are the same for every model; a compatibility route gets its own
``CompatCodec`` from its manifest entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import orjson

from ferry.bundle.manifest import CompatRoute
from ferry.bundle.mlflow import positional_columns
from ferry.errors import FerryError, InvalidInput
from ferry.protocol import kserve, mlflow, seldon, v2, v2_explain, v2_rest
from ferry.protocol.native import decode_native, encode_native, parse_json
from ferry.runtimes import Prediction
from ferry.runtimes.explain import Explanation
from ferry.serving.registry import ModelHandle

Headers = list[tuple[bytes, bytes]]
Answer = tuple[bytes, Headers]

JSON_HEADERS: Headers = [(b"content-type", b"application/json")]
BINARY_HEADERS: Headers = [(b"content-type", b"application/octet-stream")]
_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


@dataclass(slots=True)
class HttpMessage:
    """An HTTP request as a codec sees it: the whole (decompressed) body, the headers and the query string."""

    body: bytes
    headers: Headers
    query: bytes = b""

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


def json_answer(content: Any) -> Answer:
    return orjson.dumps(content, option=_OPTIONS), JSON_HEADERS


class HttpCodec:
    """The status label of an HTTP protocol is the response's status code."""

    protocol = "http"
    route = "http"

    def status(self, error: FerryError | None) -> str:
        return "200" if error is None else str(error.status)

    def decode(self, message: HttpMessage, handle: ModelHandle) -> tuple[Any, Any]:
        raise NotImplementedError

    def encode(self, prediction: Prediction, handle: ModelHandle, context: Any) -> Answer:
        raise NotImplementedError


class NativeCodec(HttpCodec):
    """Ferry's native JSON: a record, records, a row, rows, or ``{"instances": [...]}``."""

    protocol, route = "native", "model/predict"

    def decode(self, message: HttpMessage, handle: ModelHandle) -> tuple[Any, Any]:
        assert handle.codec is not None
        return decode_native(parse_json(message.body), handle.codec)

    def encode(self, prediction: Prediction, handle: ModelHandle, single: Any) -> Answer:
        assert handle.model is not None
        return json_answer(encode_native(prediction, single, handle.model.manifest.labels))


class SampleCodec(NativeCodec):
    """``GET .../predict/test``: the bundle's own sample input, answered with the input beside the prediction."""

    route = "model/predict/test"

    def decode(self, message: HttpMessage, handle: ModelHandle) -> tuple[Any, Any]:
        assert handle.codec is not None and handle.model is not None
        sample = handle.model.manifest.sample_input
        if sample is None:
            raise InvalidInput("this bundle has no sample input", "sample_input")
        batch, single = decode_native(sample, handle.codec)
        return batch, (single, sample)

    def encode(self, prediction: Prediction, handle: ModelHandle, context: Any) -> Answer:
        assert handle.model is not None
        single, sample = context
        return json_answer({"input": sample, **encode_native(prediction, single, handle.model.manifest.labels)})


class V2RestCodec(HttpCodec):
    """Open Inference Protocol v2 REST infer, with the binary tensor data extension."""

    protocol, route = "v2", "v2:infer"
    _HEADER_LENGTH = v2_rest.HEADER_LENGTH.encode()

    def decode(self, message: HttpMessage, handle: ModelHandle) -> tuple[Any, Any]:
        header_length = message.header(self._HEADER_LENGTH)
        infer = v2_rest.decode_request(
            message.body, header_length.decode("latin-1") if header_length is not None else None
        )
        v2.check_requested(infer, handle)
        return v2.to_batch(infer.inputs, handle), infer

    def explains(self, infer: Any) -> bool:
        return v2_explain.wants_explanation(infer)

    def encode(self, prediction: Prediction, handle: ModelHandle, infer: Any) -> Answer:
        parameters = None
        if isinstance(prediction, Explanation):  # ``parameters.explain``: ``v2_explain`` says what is added
            outputs, parameters = v2_explain.explained_outputs(prediction, handle, infer)
        elif v2_rest.all_json(infer):
            return v2_rest.encode_json(
                infer, handle.name, handle.version, v2.output_columns(prediction, handle)
            ), JSON_HEADERS
        else:
            outputs = v2.to_outputs(prediction, handle, infer)
        content, extra = v2_rest.encode_response(infer, handle.name, handle.version, outputs, parameters)
        if not extra:
            return content, JSON_HEADERS
        headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()]
        return content, [*BINARY_HEADERS, *headers]


class KServeCodec(HttpCodec):
    """KServe v1: ``{"instances": [...]}`` in, ``{"predictions": [...]}`` out."""

    protocol, route = "kserve", "v1:predict"

    def decode(self, message: HttpMessage, handle: ModelHandle) -> tuple[Any, Any]:
        assert handle.codec is not None
        return kserve.decode_request(parse_json(message.body), handle.codec), None

    def encode(self, prediction: Prediction, handle: ModelHandle, context: Any) -> Answer:
        return json_answer(kserve.encode_response(prediction))


class SeldonCodec(HttpCodec):
    """Seldon: a SeldonMessage in, one of the same form out."""

    protocol, route = "seldon", "seldon:predictions"

    def decode(self, message: HttpMessage, handle: ModelHandle) -> tuple[Any, Any]:
        assert handle.codec is not None
        request = seldon.decode_request(parse_json(message.body), handle.codec)
        return request.batch, request

    def encode(self, prediction: Prediction, handle: ModelHandle, request: Any) -> Answer:
        assert handle.model is not None
        return json_answer(seldon.encode_response(request, prediction, handle.model.manifest.labels))


class MlflowCodec(HttpCodec):
    """MLflow's scoring protocol: ``dataframe_split``, ``dataframe_records``, ``instances`` or ``inputs``."""

    protocol, route = "mlflow", "mlflow:invocations"

    def decode(self, message: HttpMessage, handle: ModelHandle) -> tuple[Any, Any]:
        assert handle.codec is not None and handle.model is not None
        positional = positional_columns(handle.model.manifest)  # no signature: any column names, in order
        return mlflow.decode_request(parse_json(message.body), handle.codec, positional), None

    def encode(self, prediction: Prediction, handle: ModelHandle, context: Any) -> Answer:
        return json_answer(mlflow.encode_response(prediction))


class CompatCodec(HttpCodec):
    """A compatibility route: native JSON reshaped as the hand-written API it replaces declared.

    The input is the body, one key of it (``body_key``), or query parameters; the answer is the
    bare prediction(s), or under ``response_key``. ``predict_test`` predicts the sample input.
    """

    protocol = "compat"

    def __init__(self, spec: CompatRoute) -> None:
        self.spec = spec
        self.route = f"compat:{spec.path}"

    def decode(self, message: HttpMessage, handle: ModelHandle) -> tuple[Any, Any]:
        assert handle.codec is not None and handle.model is not None
        spec = self.spec
        if spec.action == "predict_test":
            payload = handle.model.manifest.sample_input
            if payload is None:
                raise InvalidInput("this bundle has no sample input", "sample_input")
        elif spec.input.source == "query":
            payload = _query_record(message.query, spec, handle)
        else:
            payload = parse_json(message.body)
            if spec.input.source == "body_key":
                key = spec.input.key or ""
                if not isinstance(payload, dict) or key not in payload:
                    raise InvalidInput(f"missing field '{key}'", f"$.{key}")
                payload = payload[key]
        return decode_native(payload, handle.codec)

    def encode(self, prediction: Prediction, handle: ModelHandle, single: Any) -> Answer:
        assert handle.model is not None
        result = encode_native(prediction, single, handle.model.manifest.labels)
        value = result["prediction"] if "prediction" in result else result["predictions"]
        key = self.spec.response_key
        return json_answer(value if key is None else {key: value})


def _query_record(query: bytes, spec: CompatRoute, handle: ModelHandle) -> dict[str, Any]:
    assert handle.codec is not None
    params = dict(parse_qsl(query.decode("latin-1"), keep_blank_values=True))
    dtypes = {f.name: f.dtype for f in handle.codec.features}
    record: dict[str, Any] = {}
    for param, feature in spec.input.names.items():
        raw = params.get(param)
        if raw is None:
            raise InvalidInput(f"missing query parameter '{param}'", f"?{param}")
        record[feature] = _query_value(raw, dtypes.get(feature, "float64"), param)
    return record


def _query_value(raw: str, dtype: str, param: str) -> Any:
    if dtype == "string":
        return raw
    try:
        return int(raw) if dtype.startswith("int") else float(raw)
    except ValueError:
        raise InvalidInput(f"Expected a number, got '{raw[:40]}'", f"?{param}") from None


# The codecs that are the same for every model, by protocol.
CODECS: dict[str, HttpCodec] = {
    "native": NativeCodec(),
    "sample": SampleCodec(),
    "v2": V2RestCodec(),
    "kserve": KServeCodec(),
    "seldon": SeldonCodec(),
    "mlflow": MlflowCodec(),
}
