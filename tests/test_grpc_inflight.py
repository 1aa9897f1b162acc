"""gRPC request bytes in flight are bounded by ``--max-inflight-bytes``, as HTTP bodies are (issue 22 item 13).

A real server with a model that sleeps, real gRPC calls with raw tensors: a call is admitted before its
message is read, holding the largest a message may be (``--max-body-bytes``); one that would take the
bytes past the bound gets RESOURCE_EXHAUSTED, counted; a call alone never does, nor does a probe; the
bytes are released when a call ends, so the next one is served.
"""

from __future__ import annotations

import importlib.util
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

import ferry
from conftest import ServerProcess, free_port
from ferry.grpc import inference_pb2 as pb
from ferry.grpc import inference_pb2_grpc as pb_grpc

SLEEPY = Path(__file__).parent / "models" / "sleepy.py"
LIMIT = 30_000
LARGEST = 40_000  # --max-body-bytes: what a call not read yet holds
WIDE = 4_000  # FP64 values in one row: 32,000 bytes, more than LIMIT alone


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("grpc-inflight")
    spec = importlib.util.spec_from_file_location("sleepy", SLEEPY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tensor = {"kind": "tensor", "tensors": [{"name": "x", "shape": [-1, -1]}]}
    ferry.build(module.Sleepy, "sleepy", repo, version="1", input_schema=tensor, sample_input=[1.0])
    port = free_port()
    args = [str(repo), "--grpc-port", str(port), "--max-inflight-bytes", str(LIMIT), "--max-body-bytes", str(LARGEST)]
    process = ServerProcess(args, env={"FERRY_TEST_SLEEP": "1.5"})
    process.grpc_port = port
    yield process
    process.stop()


def _request(width: int) -> Any:
    values = np.arange(width, dtype=np.float64)
    tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP64", shape=[1, width])
    return pb.ModelInferRequest(model_name="sleepy", inputs=[tensor], raw_input_contents=[values.tobytes()])


def _answer(response: Any) -> np.ndarray:
    return np.frombuffer(response.raw_output_contents[0], dtype=np.float64)


def _refused(text: str) -> float:
    labels = 'model="_unknown",protocol="grpc",route="grpc:ModelInfer",status="RESOURCE_EXHAUSTED"'
    pattern = rf"^ferry_requests_total\{{{labels}\}} (\S+)$"
    found = re.search(pattern, text, re.M)
    return float(found.group(1)) if found else 0.0


def test_calls_past_the_inflight_bytes_are_resource_exhausted_and_a_lone_call_never_is(server: ServerProcess) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        # Alone, a call larger than the bound is served (--max-body-bytes bounds a single call).
        lone = stub.ModelInfer(_request(WIDE), timeout=20)
        np.testing.assert_array_equal(_answer(lone), np.arange(WIDE, dtype=np.float64))

        held: list[Any] = []
        first = threading.Thread(target=lambda: held.append(stub.ModelInfer(_request(WIDE), timeout=20)))
        first.start()
        time.sleep(0.5)  # the first call is in the model's 1.5 s sleep, its 32,000 bytes counted
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(_request(WIDE), timeout=20)
        error: Any = caught.value
        assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, (error.code(), error.details())
        assert error.details() == f"request bytes in flight exceed {LIMIT}; retry shortly"
        # Probes and metadata are never refused for bytes in flight.
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=5).live
        assert stub.ModelReady(pb.ModelReadyRequest(name="sleepy"), timeout=5).ready
        assert first.is_alive()  # (all of it while the first call held its bytes)
        first.join()
        np.testing.assert_array_equal(_answer(held[0]), np.arange(WIDE, dtype=np.float64))
        # The first call's bytes were released with its answer: the same call is served now.
        again = stub.ModelInfer(_request(WIDE), timeout=20)
        np.testing.assert_array_equal(_answer(again), np.arange(WIDE, dtype=np.float64))
    text = httpx.get(server.url + "/metrics").text
    assert _refused(text) == 1, text
    assert re.search(r'^ferry_errors_total\{code="overloaded",model="_unknown"\} 1\.0$', text, re.M), text
    assert f"gRPC: 1 calls refused for request bytes in flight (over {LIMIT}) since the last line" in server.output()
