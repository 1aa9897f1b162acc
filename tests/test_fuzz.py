"""Fuzz the decoders: whatever a client sends, the answer is a client error (4xx), never a crash."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ferry.errors import ClientError, FerryError
from ferry.protocol import kserve, seldon, v2, v2_rest
from ferry.protocol.codecs import CODECS
from ferry.protocol.native import decode_native, parse_json
from ferry.runtimes import Prediction
from ferry.serving.registry import ModelHandle, ModelRegistry

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=8), children, max_size=6),
    max_leaves=30,
)
feature_records = st.fixed_dictionaries(
    {},
    optional={"length": json_values, "width": json_values, "bmi": json_values, "text": json_values, "X": json_values},
)
payloads = (
    json_values
    | feature_records
    | st.lists(feature_records, max_size=4)
    | st.builds(lambda v: {"instances": v}, json_values)
)


@pytest.fixture(scope="module")
def handles(example_repo: Path) -> dict[str, ModelHandle]:
    registry = ModelRegistry(example_repo, trust_code=True)  # Ferry's own examples: the `score` class too
    registry.load_all()
    return {name: registry.get(name) for name in registry.models}


def _only_client_errors(call: Any) -> None:
    try:
        call()
    except FerryError as exc:
        assert isinstance(exc, ClientError), exc
        assert 400 <= exc.status < 500


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=payloads)
def test_native_decoder_never_crashes(handles: dict[str, ModelHandle], payload: Any) -> None:
    for handle in handles.values():
        assert handle.codec is not None
        codec = handle.codec
        _only_client_errors(lambda codec=codec: decode_native(payload, codec))
        _only_client_errors(lambda codec=codec: kserve.decode_request(payload, codec))
        _only_client_errors(lambda codec=codec: seldon.decode_request(payload, codec))


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_json_parser_never_crashes(body: bytes) -> None:
    _only_client_errors(lambda: parse_json(body))


tensors = st.fixed_dictionaries(
    {"name": st.sampled_from(["input", "input-0", "length", "text", "X"]) | st.text(max_size=5)},
    optional={
        "datatype": st.sampled_from(["FP64", "FP32", "FP16", "INT64", "UINT8", "BOOL", "BYTES", "BF16"]) | json_values,
        "shape": st.lists(st.integers(-2, 5), max_size=3) | json_values,
        "data": json_values,
        "parameters": json_values,
    },
)
v2_bodies = st.fixed_dictionaries(
    {"inputs": st.lists(tensors, max_size=3) | json_values},
    optional={"id": json_values, "outputs": json_values, "parameters": json_values},
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=v2_bodies)
def test_v2_decoder_never_crashes(handles: dict[str, ModelHandle], body: dict[str, Any]) -> None:
    raw = json.dumps(body).encode()
    for handle in handles.values():

        def decode(handle: ModelHandle = handle) -> None:
            request = v2_rest.decode_request(raw, None)
            v2.to_batch(request.inputs, handle)

        _only_client_errors(decode)


numbers = st.floats(allow_nan=False, allow_infinity=False) | st.integers(-3, 3) | st.sampled_from([1e39, -3.5e38, 0.0])
DEFECTS = ["name", "datatype", "shape", "size", "data", "parameters", "id", "request parameters", "outputs"]


@st.composite
def float_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """Well-formed float requests (data sized to the shape), half of them with one defect, big or small."""
    defect = draw(st.sampled_from([None] * len(DEFECTS) + DEFECTS))
    inputs = []
    for _ in range(draw(st.integers(1, 2))):
        shape = draw(st.lists(st.integers(0, 3), min_size=1, max_size=3))
        size = math.prod(shape)
        if defect == "size":
            size += draw(st.sampled_from([1, -1])) if size else 1
        tensor: dict[str, Any] = {
            "name": draw(st.sampled_from(["", "bogus", "length"] if defect == "name" else ["input", "input-0"])),
            "datatype": draw(st.sampled_from(["INT64", "FP16", "fp64"] if defect == "datatype" else ["FP64", "FP32"])),
            "shape": [-1, *shape[1:]] if defect == "shape" else shape,
            "data": [[1.0, 2.0], [True]] if defect == "data" else draw(st.lists(numbers, min_size=size, max_size=size)),
        }
        if defect == "parameters":
            tensor["parameters"] = draw(st.sampled_from([{"binary_data_size": 8}, {"content_type": "np"}, []]))
        elif draw(st.booleans()):
            tensor["parameters"] = {}
        inputs.append(tensor)
    body: dict[str, Any] = {"inputs": inputs}
    if defect == "id":
        body["id"] = draw(st.sampled_from([7, [], ""]))
    elif draw(st.booleans()):
        body["id"] = draw(st.sampled_from(["r1", None]))
    if defect == "request parameters":
        body["parameters"] = draw(st.sampled_from([{"binary_data_output": True}, {"binary_data_output": 1}, []]))
    if defect == "outputs":
        body["outputs"] = draw(st.sampled_from([[], [{"name": "label"}], {}]))
    return body


def _outcome(call: Any) -> Any:
    try:
        return ("ok", call())
    except FerryError as exc:
        return ("error", exc.status, str(exc), getattr(exc, "field", None))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=float_bodies())
def test_v2_float_fast_path_answers_as_the_long_path(handles: dict[str, ModelHandle], body: dict[str, Any]) -> None:
    """The typed decoder for the common float request only takes what the long path takes, to the same batch."""
    raw = json.dumps(body).encode()
    fast = v2_rest._decode_floats(raw)
    if fast is None:
        return
    slow = v2_rest._decode_any(raw, None)
    assert (fast.id, fast.parameters, fast.outputs) == (slow.id, slow.parameters, slow.outputs)
    for a, b in zip(fast.inputs, slow.inputs, strict=True):
        fields = ("name", "datatype", "shape", "where", "parameters")
        assert [getattr(a, f) for f in fields] == [getattr(b, f) for f in fields]
        assert a.data.dtype == b.data.dtype and a.data.tobytes() == b.data.tobytes()
    for handle in handles.values():
        fast_batch = _outcome(lambda handle=handle: v2.to_batch(fast.inputs, handle))
        slow_batch = _outcome(lambda handle=handle: v2.to_batch(slow.inputs, handle))
        if fast_batch[0] == "ok" and slow_batch[0] == "ok":
            assert fast_batch[1].dtype == slow_batch[1].dtype
            assert fast_batch[1].tobytes() == slow_batch[1].tobytes()
        else:
            assert fast_batch == slow_batch


@pytest.mark.parametrize("depth", [100, 10_000, 100_000])
def test_v2_deep_nesting_beside_the_inputs_is_a_client_error(handles: dict[str, ModelHandle], depth: int) -> None:
    """Nesting in a field the typed decoder skips is still refused as the client's error, never a crash."""
    body = b'{"x": %s, "inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP64", "data": [1, 2]}]}' % (
        b"[" * depth + b"]" * depth
    )
    for handle in handles.values():
        _only_client_errors(lambda handle=handle: v2.to_batch(v2_rest.decode_request(body, None).inputs, handle))


predictions = st.builds(
    Prediction,
    values=st.lists(st.sampled_from(["setosa", "virginica", "é ☃", 3, 2.5, -1]), min_size=1, max_size=4),
    probabilities=st.none() | st.just(np.array([[0.25, 0.75]])) | st.just(np.array([[0.5, 0.5]], dtype=np.float32)),
)
v2_requests = st.builds(
    v2.InferRequest,
    inputs=st.just([]),
    id=st.none() | st.sampled_from(["r1", ""]),
    parameters=st.sampled_from([{}, {"binary_data_output": False}, {"binary_data_output": True}, {"x": 1}]),
    outputs=st.none() | st.just([v2.RequestedOutput("label")]) | st.just([v2.RequestedOutput("prediction", False)]),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prediction=predictions, request=v2_requests)
def test_v2_json_answer_is_the_tensor_answer(
    handles: dict[str, ModelHandle], prediction: Prediction, request: v2.InferRequest
) -> None:
    """The all-JSON response written straight from the prediction has the bytes of the tensor-by-tensor one."""
    for handle in handles.values():
        if handle.model is not None and handle.model.manifest.output.kind != "label":
            prediction = Prediction([v for v in prediction.values if not isinstance(v, str)] or [1.0])
        try:
            tensors = v2.to_outputs(prediction, handle, request)
        except FerryError:  # an output this model does not have, asked for by name: not the JSON path's case
            assert not v2_rest.all_json(request)
            continue
        long_way = v2_rest.encode_response(request, handle.name, handle.version, tensors)
        answer = CODECS["v2"].encode(prediction, handle, request)
        assert answer[0] == long_way[0]
        if v2_rest.all_json(request):
            assert not long_way[1]


# -- hostile numbers: beyond float64 and int64, spliced into otherwise plausible bodies --------------
hostile_numbers = st.sampled_from(
    [b"1e400", b"-1e400", b"1e-400", b"1" * 5_000, b"-" + b"9" * 4_301, str(2**64).encode(), str(-(2**63) - 1).encode()]
)
templates = st.sampled_from(
    [
        b"%s",
        b"[%s, 2.4]",
        b'{"length": %s, "width": 2.4}',
        b'{"instances": [[%s, 2.4]]}',
        b'{"inputs": [{"name": "input", "datatype": "FP64", "shape": [1, 2], "data": [%s, 2.4]}]}',
        b'{"inputs": [{"name": "input", "datatype": "INT64", "shape": [%s, 2], "data": [1, 2]}]}',
        b'{"data": {"tensor": {"shape": [%s, 2], "values": [1, 2]}}}',
        b'{"data": {"ndarray": [[%s, 2.4]]}}',
    ]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(template=templates, number=hostile_numbers, depth=st.integers(0, 3_000), cut=st.integers(0, 40))
def test_hostile_numbers_are_client_errors(
    handles: dict[str, ModelHandle], template: bytes, number: bytes, depth: int, cut: int
) -> None:
    body = template % (b"[" * depth + number + b"]" * depth)
    body = body[: len(body) - cut]  # truncated, and so malformed, for most cuts
    for handle in handles.values():
        assert handle.codec is not None

        def decode(codec: Any = handle.codec, handle: ModelHandle = handle) -> None:
            payload = parse_json(body)
            decode_native(payload, codec)
            kserve.decode_request(payload, codec)
            seldon.decode_request(payload, codec)
            v2.to_batch(v2_rest.decode_request(body, None).inputs, handle)

        _only_client_errors(decode)


# Powers of two whose product wraps a fixed-width integer around to 0 or to a small number.
dimensions = st.sampled_from([0, 1, 2, 2**31, 2**32, 2**33, 2**63, 2**64]) | st.integers(-(2**65), 2**65)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=st.lists(dimensions, min_size=1, max_size=4), values=st.lists(st.floats(), max_size=8))
@example(shape=[0, 2**24, 2**24, 2**24], values=[])  # each dimension within the bound, their product not
def test_tensor_shapes_never_overflow(handles: dict[str, ModelHandle], shape: list[int], values: list[float]) -> None:
    seldon_body = {"data": {"tensor": {"shape": shape, "values": values}}}
    v2_body = {"inputs": [{"name": "input", "datatype": "FP64", "shape": shape, "data": values}]}
    for handle in handles.values():
        assert handle.codec is not None

        def decode(codec: Any = handle.codec, handle: ModelHandle = handle) -> None:
            seldon.decode_request(seldon_body, codec)

        def decode_v2(handle: ModelHandle = handle) -> None:
            v2.to_batch(v2_rest.decode_request(json.dumps(v2_body).encode(), None).inputs, handle)

        _only_client_errors(decode)
        _only_client_errors(decode_v2)


# -- hostile images: random bytes behind real and refused formats' signatures ----------------------------
accepted = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"BM", b"RIFF\x00\x00\x00\x00WEBPVP8 "]
signatures = st.sampled_from([*accepted, b"\x00\x00\x01\x00", b"II*\x00", b"MM\x00*", b"8BPS", b"%PDF", b"<svg"])


@settings(max_examples=200, deadline=None)
@given(head=signatures, tail=st.binary(max_size=300))
def test_image_decoder_never_crashes(head: bytes, tail: bytes) -> None:
    from ferry.runtimes.images import open_image

    _only_client_errors(lambda: open_image(head + tail, max_pixels=1_000_000))


# -- hostile artifact names and fetched keys: inside the bundle (or destination), or refused -------------
names = st.lists(st.sampled_from(["..", ".", "", "a", "model.skops", "/", "\\", "/etc", "~"]), max_size=6).map("/".join)


@settings(max_examples=300, deadline=None)
@given(name=names | st.text(max_size=30))
def test_artifact_names_stay_inside_the_bundle(tmp_path_factory: pytest.TempPathFactory, name: str) -> None:
    from ferry.bundle.artifacts import contained
    from ferry.errors import IntegrityError

    bundle = tmp_path_factory.getbasetemp() / "fuzz-repo" / "m" / "1"
    (bundle / "a").mkdir(parents=True, exist_ok=True)
    (bundle / "model.skops").write_bytes(b"x")
    (bundle.parent.parent / "outside").write_bytes(b"secret")
    try:
        path = contained(bundle, name)
    except IntegrityError:
        return
    assert path.resolve().is_relative_to(bundle.resolve()) and path.resolve().is_file()


@settings(max_examples=300, deadline=None)
@given(key=names | st.text(max_size=30))
def test_fetched_keys_stay_inside_the_destination(tmp_path_factory: pytest.TempPathFactory, key: str) -> None:
    from ferry.deploy.fetch import _inside
    from ferry.errors import FetchError

    staging = tmp_path_factory.getbasetemp() / "fuzz-dest" / ".ferry-fetch-x"
    staging.mkdir(parents=True, exist_ok=True)
    try:
        target = _inside(staging, key, f"key {key!r}")
    except FetchError:
        return
    assert target.resolve().is_relative_to(staging.resolve()) and target.resolve() != staging.resolve()
