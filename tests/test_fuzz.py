"""Fuzz the decoders: whatever a client sends, the answer is a client error (4xx), never a crash."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ferry.errors import ClientError, FerryError
from ferry.protocol import kserve, seldon, v2, v2_rest
from ferry.protocol.native import decode_native, parse_json
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
    registry = ModelRegistry(example_repo)
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
    import json

    raw = json.dumps(body).encode()
    for handle in handles.values():

        def decode(handle: ModelHandle = handle) -> None:
            request = v2_rest.decode_request(raw, None)
            v2.to_batch(request.inputs, handle)

        _only_client_errors(decode)
