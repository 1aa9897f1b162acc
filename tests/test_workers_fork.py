"""``--workers N`` forks its workers from a parent that has imported the server (shared, copy-on-write pages)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_workers_are_forked_not_spawned(serve: Any, example_repo: Path) -> None:
    server = serve(str(example_repo), "--workers", "2", "--grpc-port", "0")
    deadline = time.monotonic() + 30
    while True:
        workers = [p for p in _children(server.proc.pid) if b"multiprocessing" not in _cmdline(p)]
        if len(workers) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    # A spawned worker runs "python -c 'from multiprocessing.spawn import spawn_main ...'"; a forked one
    # keeps the parent's command line (and its imported modules).
    assert len(workers) >= 2, [_cmdline(p) for p in _children(server.proc.pid)]
    assert all(_cmdline(p) == _cmdline(server.proc.pid) for p in workers)
    response = httpx.post(server.url + "/models/iris/predict", json={"length": 5.1, "width": 2.4})
    assert response.json()["prediction"] == "virginica"


def _cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


def test_workers_fork_from_compiled_models_loaded_once(serve: Any, example_repo: Path) -> None:
    """The parent loads the compiled models before forking, so every worker shares them; a Python class model
    (whose threads or sessions a fork would not carry) loads in each worker."""
    server = serve(str(example_repo), "--workers", "2", "--grpc-port", "0")
    for _ in range(8):  # fresh connections, spread over both workers
        answer = httpx.post(server.url + "/models/iris/predict", json={"length": 5.1, "width": 2.4}, timeout=10)
        assert answer.json()["prediction"] == "virginica"
    deadline = time.monotonic() + 30
    while len(ready := _ready_lines(server.output())) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)  # the second worker may still be loading its own Python class model
    assert [pid for model, pid in ready if model == "iris:1"] == [server.proc.pid]
    workers = {pid for model, pid in ready if model == "score:1"}
    assert len(workers) == 2 and server.proc.pid not in workers


def _ready_lines(log: str) -> list[tuple[str, int]]:
    """(model, pid) of each "model ... READY" line in a JSON log."""
    found = []
    for line in log.splitlines():
        if line.startswith("{") and line.endswith("}"):
            record = json.loads(line)
            words = record.get("msg", "").split()
            if len(words) == 3 and words[0] == "model" and words[2] == "READY":
                found.append((words[1], record["pid"]))
    return found


def test_grpc_imported_before_forking_serves_from_every_worker(serve: Any, example_repo: Path) -> None:
    """With gRPC on, grpcio is imported by the parent (its pages shared by the workers), and each worker
    starts its own gRPC server on the shared port: calls over fresh connections all succeed."""
    import grpc
    import numpy as np
    from tests.conftest import free_port

    from ferry.grpc import inference_pb2 as pb
    from ferry.grpc import inference_pb2_grpc as pb_grpc

    grpc_port = free_port()
    server = serve(str(example_repo), "--workers", "2", "--grpc-port", str(grpc_port))
    assert "cygrpc" in Path(f"/proc/{server.proc.pid}/maps").read_text()  # the parent imported it
    data = np.array([[5.1, 2.4]])
    tensor = pb.ModelInferRequest.InferInputTensor(name="input-0", datatype="FP64", shape=list(data.shape))
    tensor.contents.fp64_contents.extend(data.ravel().tolist())
    for _ in range(8):  # fresh connections, spread over both workers
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            reply = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                pb.ModelInferRequest(model_name="iris", inputs=[tensor]), timeout=10
            )
        assert list(reply.outputs[0].contents.bytes_contents) == [b"virginica"]
