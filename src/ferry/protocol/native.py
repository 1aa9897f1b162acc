"""Ferry's native JSON: one record, a list of records, a bare row, rows, or ``{"instances": [...]}``."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from ferry.errors import InvalidInput, MalformedRequest, ModelError
from ferry.runtimes import Prediction
from ferry.serving.inputs import InputCodec

if TYPE_CHECKING:
    from ferry.serving.warmup import WarmUp

_decoder = msgspec.json.Decoder()


def parse_json(body: bytes) -> Any:
    """Decode a JSON body; the error says where it broke, and says so plainly for NaN."""
    if not body:
        raise MalformedRequest("request body is empty; expected JSON")
    try:
        return _decoder.decode(body)
    except msgspec.ValidationError as exc:
        return _parse_out_of_range(body, exc)
    except RecursionError:
        raise InvalidInput("JSON is nested too deeply", "$") from None
    except msgspec.DecodeError as exc:
        hint = " (NaN and Infinity are not valid JSON)" if b"NaN" in body or b"Infinity" in body else ""
        raise MalformedRequest(f"malformed JSON: {exc}{hint}") from None


def _parse_out_of_range(body: bytes, first: msgspec.ValidationError) -> Any:
    """A number msgspec will not hold, such as 1e400: the stdlib reads it as infinity, which the schema
    check then refuses with the field's name (or accepts, where NaN is allowed). The stdlib parse is
    bounded too: integers stay within 64 bits, and its own errors are the client's, never a 500."""
    try:
        return json.loads(body, parse_int=_int64)
    except _IntegerOutOfRange as exc:
        where = _where(first) if str(first).startswith("Integer") else "$"
        raise InvalidInput(f"integer with {exc.digits} digits is out of range (64-bit at most)", where) from None
    except RecursionError:
        raise InvalidInput("JSON is nested too deeply", "$") from None
    except ValueError as exc:  # JSONDecodeError, or bytes that are not UTF-8
        raise MalformedRequest(f"malformed JSON: {exc}") from None


class _IntegerOutOfRange(Exception):
    def __init__(self, digits: int) -> None:
        self.digits = digits


def _int64(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > 20 or not -(2**63) <= (value := int(text)) < 2**64:
        raise _IntegerOutOfRange(digits)
    return value


def _where(error: msgspec.ValidationError) -> str:
    """The path in msgspec's message (``... - at `$[0]` ``), where the first out-of-range number sits."""
    _, _, path = str(error).partition(" - at `")
    return path.rstrip("`") or "$"


def decode_native(payload: Any, codec: InputCodec) -> tuple[Any, bool]:
    """Return ``(batch, single)``: ``single`` when the client sent one record or one row."""
    if isinstance(payload, dict):
        if "instances" in payload and (codec.kind != "features" or "instances" not in codec.name_set):
            instances = payload["instances"]
            if not isinstance(instances, list):
                raise InvalidInput("Expected `array`", "$.instances")
            return _decode_list(instances, codec, "$.instances"), False
        return codec.from_records([payload], one_object=True), True
    if isinstance(payload, list):
        if not payload:
            raise InvalidInput("empty batch: send at least one record", "$")
        if all(not isinstance(v, list | dict) for v in payload) and codec.kind in ("features", "tensor"):
            return codec.from_rows([payload]), True
        return _decode_list(payload, codec, "$"), False
    if isinstance(payload, str) and codec.kind in ("text", "image"):
        return codec.from_rows([payload]), True
    raise InvalidInput("Expected an object, an array of objects, or an array of rows", "$")


def _decode_list(items: list[Any], codec: InputCodec, prefix: str) -> Any:
    if not items:
        raise InvalidInput("empty batch: send at least one record", prefix)
    if isinstance(items[0], dict):
        return codec.from_records(items, prefix)
    return codec.from_rows(items, prefix)


def encode_native(prediction: Prediction, single: bool, labels: list[str] | None) -> dict[str, Any]:
    """``{"prediction": ...}`` for one record, ``{"predictions": [...]}`` for several."""
    probabilities = _probability_maps(prediction.probabilities, labels)
    if single:
        body: dict[str, Any] = {"prediction": prediction.values[0]}
        if probabilities is not None:
            body["probabilities"] = probabilities[0]
        return body
    body = {"predictions": prediction.values}
    if probabilities is not None:
        body["probabilities"] = probabilities
    return body


def _probability_maps(probabilities: np.ndarray | None, labels: list[str] | None) -> list[dict[str, float]] | None:
    if probabilities is None or not labels or probabilities.shape[1] != len(labels):
        return None
    return [dict(zip(labels, row, strict=True)) for row in probabilities.tolist()]


def answer(payload: Any, codec: InputCodec, runtime: Any, labels: list[str] | None) -> Any:
    """What a client posting ``payload`` to the native predict route gets under ``prediction(s)``."""
    batch, single = decode_native(payload, codec)
    return answer_of(runtime.predict(batch), single, labels)


def answer_of(prediction: Prediction, single: bool, labels: list[str] | None) -> Any:
    """``prediction(s)`` of the native body: what a bundle's ``expected_output`` is compared with."""
    body = encode_native(prediction, single, labels)
    return body["prediction"] if single else body["predictions"]


def served_answer(prediction: Prediction, single: bool, labels: list[str] | None) -> Any:
    """``answer_of``, after encoding the whole body to JSON bytes exactly as the server writes it."""
    import orjson

    body = encode_native(prediction, single, labels)
    try:
        orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)
    except TypeError as exc:
        raise ModelError(f"the answer cannot be written as JSON: {exc}") from None
    return body["prediction"] if single else body["predictions"]


def native_warm_up() -> WarmUp:
    """The registry's warm-up (and ``ferry build``'s check): bundles' sample inputs are written in this protocol."""
    from ferry.serving.warmup import sample_warm_up

    return sample_warm_up(decode_native, served_answer)
