"""A gRPC request whose bytes are not the method's message: INVALID_ARGUMENT naming it, and counted.

gRPC's own handler turned a failed parse into UNKNOWN ("Exception deserializing request!") and no
metric saw the call. Raw bytes go to a real server here, as a broken or hostile client sends them.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from conftest import ServerProcess, free_port
from ferry.grpc import inference_pb2 as pb

SERVICE = "/inference.GRPCInferenceService/"
NOT_A_MESSAGE = b"\xff\xff\xff\xff"  # field 0 / a truncated varint: no message parses from it
IRIS = pb.ModelInferRequest(
    model_name="iris",
    inputs=[
        pb.ModelInferRequest.InferInputTensor(
            name=name, datatype="FP64", shape=[1], contents=pb.InferTensorContents(fp64_contents=[value])
        )
        for name, value in (("length", 5.1), ("width", 2.4))
    ],
)


def _requests(text: str, route: str, status: str) -> float:
    pattern = rf'^ferry_requests_total{{model="_unknown",protocol="grpc",route="{route}",status="{status}"}} (\S+)$'
    found = re.search(pattern, text, re.M)
    return float(found.group(1)) if found else 0.0


@pytest.fixture(scope="module")
def server(example_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    repo = tmp_path_factory.mktemp("grpc-malformed")
    shutil.copytree(example_repo / "iris", repo / "iris")
    port = free_port()
    process = ServerProcess([str(repo), "--grpc-port", str(port)])
    process.grpc_port = port
    yield process
    process.stop()


@pytest.mark.parametrize("method", ["ModelInfer", "ModelMetadata", "ModelReady", "ServerLive"])
def test_malformed_protobuf_is_invalid_argument_and_counted(server: ServerProcess, method: str) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        call = channel.unary_unary(SERVICE + method)  # no serializers: the bytes go as they are
        with pytest.raises(grpc.RpcError) as caught:
            call(NOT_A_MESSAGE, timeout=10)
        infer = channel.unary_unary(
            SERVICE + "ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        answer = infer(IRIS, timeout=10)  # the server serves on
    error: Any = caught.value
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
    request_type = {"ModelInfer": "ModelInferRequest", "ModelMetadata": "ModelMetadataRequest"}
    request_type |= {"ModelReady": "ModelReadyRequest", "ServerLive": "ServerLiveRequest"}
    assert error.details().startswith(f"malformed {request_type[method]}: ")
    assert answer.outputs[0].contents.bytes_contents == [b"virginica"]
    text = httpx.get(server.url + "/metrics").text
    assert _requests(text, f"grpc:{method}", "INVALID_ARGUMENT") == 1
    assert re.search(r'^ferry_errors_total\{code="invalid_input",model="_unknown"\} [1-9]', text, re.M), text
