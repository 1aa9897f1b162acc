"""``ferry.grpc.wire``, the common ModelInfer messages by hand, against protobuf's own: a request read by
``read_infer`` decodes to what protobuf's parse decodes to (the same tensors, or the same error), whatever the
message; ``ReplyWriter``'s bytes parse to the reply protobuf's objects build; and each leaves the rest to protobuf."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import orjson
import pytest
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ferry.errors import InvalidInput
from ferry.grpc import inference_pb2 as pb
from ferry.grpc import wire
from ferry.grpc.codec import decode_request, encode_columns, parse_infer
from ferry.grpc.wire import ReplyWriter, WireInfer, read_infer
from ferry.protocol import v2, v2_rest

HANDLE: Any = SimpleNamespace(name="iris", version="1")
COLUMNS: dict[str, list[v2.Column]] = {
    "labels": [("label", "BYTES", [3], ["setosa", "virginica", "setosa"])],
    "unicode and long labels": [("label", "BYTES", [2], ["映像がとても美しい", "x" * 300])],
    "probabilities": [
        ("label", "BYTES", [2], ["a", "b"]),
        ("probabilities", "FP64", [2, 3], np.array([[0.1, 0.2, 0.7], [np.nan, -0.0, 1e308]])),
    ],
    "float32 scores": [("predict", "FP32", [4], np.array([1.5, -2.25, 3e38, 0.0], dtype=np.float32))],
    "booleans": [("predict", "BOOL", [3], np.array([True, False, True]))],
    "a big batch": [("predict", "FP64", [1000, 1], np.arange(1000, dtype=np.float64).reshape(1000, 1))],
}


@pytest.mark.parametrize("case", list(COLUMNS))
@pytest.mark.parametrize("request_id", [None, "req-7"])
def test_written_bytes_parse_to_protobufs_own_reply(case: str, request_id: str | None) -> None:
    request = v2.InferRequest([], request_id, {}, None)
    written = ReplyWriter().write(request, HANDLE, COLUMNS[case])
    assert written is not None
    assert pb.ModelInferResponse.FromString(written) == encode_columns(request, HANDLE, COLUMNS[case])


def test_what_it_does_not_write_is_left_to_protobuf() -> None:
    request = v2.InferRequest([], None, {}, None)
    writer = ReplyWriter()
    assert writer.write(request, HANDLE, [("predict", "INT64", [2], np.array([1, -2]))]) is None
    assert writer.write(request, HANDLE, [("label", "BYTES", [1], [b"raw bytes"])]) is None
    assert writer.write(request, HANDLE, [("label", "BYTES", [0], [])]) is None
    assert writer.write(request, HANDLE, [("label", "BYTES", [2], ["a", ["not", "hashable"]])]) is None
    unversioned: Any = SimpleNamespace(name="m", version="")
    labels: list[v2.Column] = [("label", "BYTES", [1], ["x"])]
    written = writer.write(request, unversioned, labels)
    assert written is not None
    assert pb.ModelInferResponse.FromString(written) == encode_columns(request, unversioned, labels)


# -- reading


def _request(
    inputs: list[tuple[str, str, list[int], str | None, list[Any]]],
    model: str = "iris",
    version: str = "",
    request_id: str = "",
    raw: list[bytes] | None = None,
    outputs: list[str] | None = None,
    parameters: bool = False,
) -> Any:
    request = pb.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    for name, datatype, shape, field, values in inputs:
        tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
        if field is not None:
            getattr(tensor.contents, field).extend(values)
        if parameters:
            tensor.parameters["content_type"].string_param = "np"
    for output in outputs or []:
        request.outputs.add(name=output)
    request.raw_input_contents.extend(raw or [])
    return request


def _decoded(request: Any) -> tuple[str, Any]:
    """What the codec makes of a request: its tensors (data as bytes, with dtype and NaN places), or its error."""
    try:
        infer = decode_request(request)
    except InvalidInput as exc:
        return "error", (exc.message, exc.field)
    for tensor in infer.inputs:  # a tensor said to be finite skips the NaN check: it must be
        assert not tensor.finite or np.isfinite(tensor.data).all()
    tensors = [
        (t.name, t.datatype, t.shape, t.data.dtype.str, t.data.shape, t.data.tobytes(), t.parameters, t.where)
        for t in infer.inputs
    ]
    outputs = None if infer.outputs is None else [o.name for o in infer.outputs]
    return "ok", (tensors, infer.id, infer.parameters, outputs, len(request.raw_input_contents) > 0)


def _both(message: bytes) -> tuple[Any, Any]:
    """The hand-read request and protobuf's, from the same bytes."""
    read = read_infer(message)
    return read, pb.ModelInferRequest.FromString(message)


COMMON = {
    "one row": _request([("input", "FP64", [1, 2], "fp64_contents", [5.1, 3.5])]),
    "a hundred rows, FP32": _request([("input", "FP32", [100, 2], "fp32_contents", [0.25, -1.5] * 100)]),
    "a tensor per feature, versioned, with an id": _request(
        [("length", "FP64", [3], "fp64_contents", [1.0, 2.0, 3.0]), ("width", "FP64", [3], "fp64_contents", [4.0] * 3)],
        version="2",
        request_id="req-映像",
    ),
    "a dimension past 127": _request([("input", "FP64", [200, 1], "fp64_contents", [0.5] * 200)]),
    "raw contents, as Triton's clients send": _request(
        [("input", "FP64", [2, 2], None, [])], raw=[np.arange(4, dtype="<f8").tobytes()]
    ),
    "outputs asked for by name": _request([("input", "FP64", [1, 2], "fp64_contents", [1, 2])], outputs=["predict"]),
}


@pytest.mark.parametrize("case", list(COMMON))
def test_the_common_request_is_read_by_hand_to_what_protobuf_reads(case: str) -> None:
    message = COMMON[case].SerializeToString()
    read, parsed = _both(message)
    assert isinstance(read, WireInfer), "the common form is read by hand"
    assert (read.model_name, read.model_version) == (parsed.model_name, parsed.model_version)
    assert read.ByteSize() == len(message)
    assert _decoded(read) == _decoded(parsed)


def test_a_request_shaped_like_the_last_is_filled_in_without_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    first = _request([("input", "FP64", [1, 2], "fp64_contents", [1.0, 2.0])]).SerializeToString()
    assert read_infer(first) is not None
    again = _request([("input", "FP64", [1, 2], "fp64_contents", [3.5, float("nan")])]).SerializeToString()

    def unread(data: bytes) -> Any:
        raise AssertionError("read again")

    monkeypatch.setattr(wire, "_read_infer", unread)
    read, parsed = _both(again)
    assert read is not None and _decoded(read) == _decoded(parsed)
    assert read.inputs[0][4] == np.array([3.5, np.nan]).tobytes()


def test_raw_contents_shaped_like_the_last_are_filled_in_without_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    first = COMMON["raw contents, as Triton's clients send"].SerializeToString()
    assert read_infer(first) is not None
    values = np.array([1.5, -2.0, np.inf, 4.0], dtype="<f8").tobytes()
    again = _request([("input", "FP64", [2, 2], None, [])], raw=[values]).SerializeToString()

    def unread(data: bytes) -> Any:
        raise AssertionError("read again")

    monkeypatch.setattr(wire, "_read_infer", unread)
    read, parsed = _both(again)
    assert read is not None and read.raw_input_contents == [values]
    assert _decoded(read) == _decoded(parsed)


@pytest.mark.parametrize(
    "other",
    [
        _request([("input", "FP64", [1, 2], "fp64_contents", [1.0, 2.0])], model="iriz"),
        _request([("input", "FP64", [2, 1], "fp64_contents", [1.0, 2.0])]),
        _request([("inpuT", "FP64", [1, 2], "fp64_contents", [1.0, 2.0])]),
        _request([("input", "FP64", [1, 2], "fp64_contents", [1.0, 2.0])], request_id="a", model="i"),
    ],
)
def test_a_request_of_the_same_length_but_another_shape_is_read(other: Any) -> None:
    first = _request([("input", "FP64", [1, 2], "fp64_contents", [1.0, 2.0])]).SerializeToString()
    assert read_infer(first) is not None
    message = other.SerializeToString()
    assert len(message) == len(first)
    read, parsed = _both(message)
    assert read is not None
    assert (read.model_name, read.id) == (parsed.model_name, parsed.id)
    assert _decoded(read) == _decoded(parsed)


UNCOMMON = {
    "request parameters": _request([("input", "FP64", [1, 2], "fp64_contents", [1, 2])], parameters=True),
    "INT64 contents": _request([("input", "INT64", [1, 2], "int64_contents", [1, 2])]),
    "BYTES contents": _request([("input", "BYTES", [1], "bytes_contents", [b"x"])]),
}


@pytest.mark.parametrize("case", list(UNCOMMON))
def test_anything_else_is_left_to_protobuf(case: str) -> None:
    message = UNCOMMON[case].SerializeToString()
    assert read_infer(message) is None
    assert not isinstance(parse_infer(message), WireInfer)


def test_a_kept_shape_holds_none_of_the_values() -> None:
    """A client's large request, kept as the shape of its length, keeps only the bytes around its values."""
    values = np.arange(1 << 17, dtype="<f8").tobytes()  # 1 MiB
    message = _request([("input", "FP64", [1 << 16, 2], None, [])], raw=[values]).SerializeToString()
    assert read_infer(message) is not None
    kept = wire._SHAPES[len(message)]
    assert kept.known.message == b"" and kept.known.raw_input_contents == [b""]
    assert len(kept.before) + len(kept.after) < 100


def test_a_shape_of_many_dimensions_is_refused_before_they_are_unpacked() -> None:
    message = _request([("input", "FP64", [1] * 200_000, "fp64_contents", [1.0])]).SerializeToString()
    assert read_infer(message) is None  # protobuf's, whose length is checked before its list is made
    with pytest.raises(InvalidInput, match="shape has more than 32 dimensions"):
        decode_request(parse_infer(message))


ONE_ROW = COMMON["one row"].SerializeToString()


def test_an_output_name_of_a_long_length_is_read_as_protobuf_reads_it() -> None:
    """A length of two varint bytes (found by an adversarial review: read as one byte, a valid request was
    refused and one protobuf refuses was taken)."""
    valid = ONE_ROW + b"2\x82\x01" + b"\n\x80\x00" + b"\n\x00" * 59 + b"\n\x07predict"
    read, parsed = read_infer(valid), pb.ModelInferRequest.FromString(valid)
    assert read is None or read.outputs == [o.name for o in parsed.outputs]
    assert _decoded(parse_infer(valid)) == _decoded(parsed)
    invalid = ONE_ROW + b"2\x82\x01" + b"\n\x80" + b"a" * 128
    assert read_infer(invalid) is None
    with pytest.raises(DecodeError):
        parse_infer(invalid)


@pytest.mark.parametrize("field", [b"*\x00", b":\x02ab", b"2\x00"])
def test_a_message_of_many_tiny_fields_is_left_to_protobuf(field: bytes) -> None:
    """Inputs, raw buffers or outputs past a few dozen: protobuf walks millions of them in C (read here, 8 MiB
    of empty inputs held the event loop for seconds)."""
    message = ONE_ROW + field * 100_000
    assert read_infer(message) is None
    with pytest.raises(InvalidInput):
        decode_request(parse_infer(message))


def test_more_outputs_asked_for_than_any_model_has_are_refused_before_they_are_made() -> None:
    """4 million empty output names in one message cost seconds to make into objects: 64 at most, on gRPC and REST."""
    message = ONE_ROW + b"2\x00" * 100
    with pytest.raises(InvalidInput, match="100 outputs asked for; at most 64"):
        decode_request(parse_infer(message))
    inputs = [{"name": "input", "datatype": "FP64", "shape": [1, 2], "data": [1.0, 2.0]}]
    body = orjson.dumps({"inputs": inputs, "outputs": [{"name": "predict"}] * 100})
    handle: Any = None  # (refused before the model is looked at)
    with pytest.raises(InvalidInput, match="100 outputs asked for; at most 64"):
        v2.check_requested(v2_rest.decode_request(body, None), handle)


def test_more_than_32_dimensions_are_named_so_on_both_paths() -> None:
    message = _request([("input", "FP64", [1] * 40 + [-1], "fp64_contents", [1.0])]).SerializeToString()
    errors = []
    for parsed in (parse_infer(message), pb.ModelInferRequest.FromString(message)):
        with pytest.raises(InvalidInput) as caught:
            decode_request(parsed)
        errors.append(caught.value.message)
    assert errors[0] == errors[1] and errors[0].startswith("shape has more than 32 dimensions")


def test_what_protobuf_refuses_is_never_read_by_hand() -> None:
    message = COMMON["one row"].SerializeToString()
    for bad in (message[:-1], message + b"\x0a", b"\x0a\x02\xff\xfe" + message, b"\xff\xff\xff\xff"):
        assert read_infer(bad) is None
        with pytest.raises(DecodeError):
            parse_infer(bad)


_DATATYPES = st.sampled_from(["FP64", "FP32", "INT64", "BYTES", "FP16", "bogus", ""])
_FIELDS = st.sampled_from(["fp64_contents", "fp32_contents", "int64_contents", None])
_FLOATS = st.floats(width=32) | st.sampled_from([float("nan"), float("inf"), 1e300])


@st.composite
def infer_requests(draw: st.DrawFn) -> Any:
    """A ModelInferRequest of any form: fields or none, any datatypes, shapes, contents (tests/test_grpc.py too)."""
    inputs = []
    for _ in range(draw(st.integers(0, 3))):
        field = draw(_FIELDS)
        values: list[Any] = draw(
            st.lists(st.integers(-(2**40), 2**40) if field == "int64_contents" else _FLOATS, max_size=8)
        )
        shape = draw(st.lists(st.integers(-3, 300) | st.sampled_from([-(2**63), 2**62]), max_size=3))
        name = draw(st.sampled_from(["input", "length", "", "映像"]))
        inputs.append((name, draw(_DATATYPES), shape, field, values))
    raw = draw(st.none() | st.lists(st.binary(max_size=40) | st.sampled_from([b""]), max_size=3))
    outputs = draw(st.none() | st.lists(st.sampled_from(["predict", "", "p"]), max_size=2))
    model = draw(st.sampled_from(["iris", "diabetes", "reviews"]) | st.text(max_size=5))
    return _request(
        inputs, model, draw(st.text(max_size=3)), draw(st.text(max_size=3)), raw, outputs,
        draw(st.booleans()),
    )  # fmt: skip


@st.composite
def iris_requests(draw: st.DrawFn) -> Any:
    """A request the iris example answers: 1-4 rows of two features, FP64 or FP32, in contents or raw."""
    rows = draw(st.integers(1, 4))
    datatype, dtype, field = draw(st.sampled_from([("FP64", "<f8", "fp64_contents"), ("FP32", "<f4", "fp32_contents")]))
    values = draw(st.lists(st.floats(0.5, 8.0, width=32), min_size=2 * rows, max_size=2 * rows))
    if draw(st.booleans()):
        raw = [np.array(values, dtype=dtype).tobytes()]
        return _request([("input", datatype, [rows, 2], None, [])], raw=raw)
    return _request([("input", datatype, [rows, 2], field, values)])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(infer_requests(), st.data())
def test_any_request_decodes_as_protobufs_parse_does(request: Any, data: st.DataObject) -> None:
    """Whatever a client sends, well formed or cut and flipped (after the original, so that a flipped copy may
    be filled in from it): read by hand only where protobuf parses it too, and then to the same tensors or the
    same error."""
    message = request.SerializeToString()
    read_infer(message)  # (remembered if it can be: a damaged copy of the same length is then filled in, or read)
    if message and data.draw(st.booleans()):  # a damaged copy: one byte changed, or the end cut off
        at = data.draw(st.integers(0, len(message) - 1))
        if data.draw(st.booleans()):
            message = message[:at]
        else:
            message = message[:at] + bytes([data.draw(st.integers(0, 255))]) + message[at + 1 :]
    read = read_infer(message)
    try:
        parsed = pb.ModelInferRequest.FromString(message)
    except DecodeError:
        assert read is None
        return
    if read is not None:
        assert (read.model_name, read.model_version) == (parsed.model_name, parsed.model_version)
        assert _decoded(read) == _decoded(parsed)
