"""Open Inference v2 over gRPC against a real ``ferry serve --grpc-port``: NVIDIA's client and typed contents."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.utils import InferenceServerException

from conftest import ServerProcess, free_port
from ferry.grpc import inference_pb2 as pb
from ferry.grpc import inference_pb2_grpc as pb_grpc
from test_grpc_wire import infer_requests, iris_requests


@pytest.fixture(scope="module")
def address(grpc_examples_server: ServerProcess) -> str:
    return f"127.0.0.1:{grpc_examples_server.grpc_port}"  # the session's server (tests/conftest.py)


@pytest.fixture(scope="module")
def triton(address: str) -> Iterator[triton_grpc.InferenceServerClient]:
    client = triton_grpc.InferenceServerClient(address)
    yield client
    client.close()


@pytest.fixture(scope="module")
def stub(address: str) -> Iterator[Any]:
    with grpc.insecure_channel(address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def test_triton_grpc_health_and_metadata(triton: triton_grpc.InferenceServerClient) -> None:
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready("iris") and triton.is_model_ready("diabetes", "1")
    assert triton.get_server_metadata(as_json=True)["extensions"] == ["binary_tensor_data"]
    iris = triton.get_model_metadata("iris", as_json=True)
    assert iris["inputs"] == [{"name": "input", "datatype": "FP64", "shape": ["-1", "2"]}]  # int64 as JSON strings
    diabetes = triton.get_model_metadata("diabetes", as_json=True)
    assert diabetes["outputs"] == [{"name": "predict", "datatype": "FP64", "shape": ["-1"]}]  # as MLServer names it
    with pytest.raises(InferenceServerException, match=r"NOT_FOUND.*model 'nope' not found"):
        triton.is_model_ready("nope")


def test_triton_grpc_infer_iris_and_diabetes(triton: triton_grpc.InferenceServerClient) -> None:
    x = np.array([[1.4, 0.2], [5.5, 2.1]], dtype=np.float32)
    tensor = triton_grpc.InferInput("input", [2, 2], "FP32")
    tensor.set_data_from_numpy(x)
    result = triton.infer("iris", [tensor], request_id="g-1", outputs=[triton_grpc.InferRequestedOutput("label")])
    assert result.as_numpy("label").tolist() == [b"setosa", b"virginica"]
    assert result.get_response().id == "g-1"
    tensor = triton_grpc.InferInput("input", [1, 1], "FP64")
    tensor.set_data_from_numpy(np.array([[0.05]]))
    assert triton.infer("diabetes", [tensor], model_version="1").as_numpy("predict")[0] == pytest.approx(
        199.605, abs=1e-3
    )


def test_triton_grpc_bytes(triton: triton_grpc.InferenceServerClient) -> None:
    tensor = triton_grpc.InferInput("text", [2], "BYTES")
    tensor.set_data_from_numpy(np.array(["映像がとても美しい".encode(), "退屈だった".encode()], dtype=object))
    stars = triton.infer("reviews", [tensor]).as_numpy("predict")
    assert stars.shape == (2,) and all(1.0 <= s <= 5.0 for s in stars)


def infer_request(model: str, name: str, datatype: str, shape: list[int], **contents: Any) -> Any:
    request = pb.ModelInferRequest(model_name=model, id="typed")
    tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
    for field, values in contents.items():
        getattr(tensor.contents, field).extend(values)
    return request


def test_typed_contents_in_typed_contents_out(stub: Any) -> None:
    response = stub.ModelInfer(infer_request("score", "X", "INT32", [2, 2], int_contents=[1, 2, 3, 4]))
    assert not response.raw_output_contents and response.id == "typed"
    output = response.outputs[0]
    assert (output.name, output.datatype, list(output.shape)) == ("prediction", "FP64", [2, 2])
    assert list(output.contents.fp64_contents) == [1.0, 2.0, 3.0, 4.0]
    iris = stub.ModelInfer(infer_request("iris", "input", "FP64", [1, 2], fp64_contents=[1.4, 0.2]))
    assert list(iris.outputs[0].contents.bytes_contents) == [b"setosa"]
    text = stub.ModelInfer(infer_request("reviews", "text", "BYTES", [1], bytes_contents=["良い".encode()]))
    assert 1.0 <= text.outputs[0].contents.fp64_contents[0] <= 5.0


def test_raw_contents_in_raw_contents_out(stub: Any) -> None:
    request = pb.ModelInferRequest(model_name="score")
    request.inputs.add(name="X", datatype="FP32", shape=[1, 3])
    request.raw_input_contents.append(np.array([1, 2, 3], dtype="<f4").tobytes())
    response = stub.ModelInfer(request)
    assert np.frombuffer(response.raw_output_contents[0], dtype="<f8").tolist() == [1.0, 2.0, 3.0]


ERRORS: dict[str, tuple[Callable[[], Any], grpc.StatusCode, str]] = {
    "unknown_model": (
        lambda: infer_request("nope", "X", "FP64", [1, 1], fp64_contents=[1.0]),
        grpc.StatusCode.NOT_FOUND,
        "model 'nope' not found",
    ),
    "wrong_datatype": (
        lambda: infer_request("iris", "input", "BYTES", [1, 2], bytes_contents=[b"a", b"b"]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "has datatype BYTES but model 'iris' takes FP64",
    ),
    "wrong_shape": (
        lambda: infer_request("diabetes", "input", "FP64", [1, 2], fp64_contents=[1.0, 2.0]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "has shape [1, 2]; expected [-1, 1]",
    ),
    "shape_mismatch": (
        lambda: infer_request("score", "X", "FP64", [2, 2], fp64_contents=[1.0]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "shape [2, 2] holds 4 elements but fp64_contents has 1",
    ),
    "nan_value": (  # protobuf carries NaN, JSON cannot: the same refusal as v2 REST's binary data gets
        lambda: infer_request("iris", "input", "FP64", [1, 2], fp64_contents=[float("nan"), 2.0]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "NaN or infinity is not allowed",
    ),
    "wrong_input_name": (  # the shared codec's check: the same rule and message as v2 REST
        lambda: infer_request("iris", "bogus", "FP64", [1, 2], fp64_contents=[1.0, 2.0]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "unknown input 'bogus'; model 'iris' takes 'input' FP64 [-1, 2], or one [-1] tensor per feature: length, width"
        " - at `inputs[0].name`",
    ),
    "unknown_output": (
        lambda: _with_output(infer_request("iris", "input", "FP64", [1, 2], fp64_contents=[1.0, 2.0]), "probabilities"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "unknown output 'probabilities'; model 'iris' has outputs: predict",
    ),
}


def _with_output(request: Any, name: str) -> Any:
    request.outputs.add(name=name)
    return request


@pytest.mark.parametrize("case", list(ERRORS))
def test_grpc_errors(stub: Any, case: str) -> None:
    build, code, message = ERRORS[case]
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(build())
    assert caught.value.code() == code and message in caught.value.details()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(iris_requests() | infer_requests(), st.data())
def test_any_message_gets_an_answer_or_a_client_error(address: str, request: Any, data: st.DataObject) -> None:
    """Whatever bytes a client sends to ModelInfer, whole or damaged, read by hand or by protobuf: an answer, or a
    status that blames the request (never UNKNOWN or INTERNAL, never a hang)."""
    message = request.SerializeToString()
    if message and data.draw(st.booleans()):
        at = data.draw(st.integers(0, len(message) - 1))
        message = message[:at] + bytes([data.draw(st.integers(0, 255))]) + message[at + 1 :]
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        try:
            call(message, timeout=10)
        except grpc.RpcError as exc:
            assert exc.code() in CLIENT_ERRORS, (exc.code(), exc.details())


CLIENT_ERRORS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.UNAUTHENTICATED,
}


def test_raw_size_mismatch_and_malformed_message(address: str, stub: Any) -> None:
    request = pb.ModelInferRequest(model_name="score")
    request.inputs.add(name="X", datatype="FP64", shape=[1, 2])
    request.raw_input_contents.append(b"\x00" * 12)
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "needs 16 bytes" in caught.value.details()
    with grpc.insecure_channel(address) as channel:
        garbage = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as caught:
            garbage(b"\xff\xff\xff\xff")  # not a protobuf message
        # A client's error like any other (tests/test_grpc_malformed.py: every method, and the metrics).
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details().startswith("malformed ModelInferRequest: Error parsing message")
    assert stub.ServerLive(pb.ServerLiveRequest()).live


def test_grpc_port_zero_is_off_and_env_sets_the_port(example_repo: Path, serve: Callable[..., ServerProcess]) -> None:
    off = serve(str(example_repo), "--grpc-port", "0", env={"FERRY_GRPC_PORT": "1"})
    assert httpx.get(off.url + "/v2/health/live").json() == {"live": True}
    assert "gRPC" not in off.output()
    port = free_port()
    on = serve(str(example_repo), env={"FERRY_GRPC_PORT": str(port)})
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        assert pb_grpc.GRPCInferenceServiceStub(channel).ServerReady(pb.ServerReadyRequest(), timeout=5).ready
    assert f"gRPC (Open Inference v2) on 127.0.0.1:{port}" in on.output()
