"""``ferry demo`` listens where it is told: the same port options as ``ferry serve``, from the same settings.

Issue 21: with the default gRPC or probe port taken, demo failed naming ``--grpc-port``, a flag it rejected.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
from tests.conftest import free_port
from tests.test_byom import ferry

from ferry.grpc import inference_pb2 as pb


def _wait_ready(proc: subprocess.Popen[bytes], url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"ferry demo exited with {proc.returncode}"
        try:
            if httpx.get(f"{url}/ready", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"ferry demo not ready after {timeout}s")


def test_demo_serves_grpc_and_probes_on_the_ports_given(example_repo: Path) -> None:
    http, grpc_port, probe = free_port(), free_port(), free_port()
    args = ["demo", "--cache", str(example_repo), "--port", str(http)]
    args += ["--grpc-port", str(grpc_port), "--probe-port", str(probe)]
    proc = subprocess.Popen([sys.executable, "-m", "ferry", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_ready(proc, f"http://127.0.0.1:{http}")
        assert httpx.get(f"http://127.0.0.1:{probe}/health", timeout=5.0).status_code == 200
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            ready = channel.unary_unary(
                "/inference.GRPCInferenceService/ModelReady",
                request_serializer=pb.ModelReadyRequest.SerializeToString,
                response_deserializer=pb.ModelReadyResponse.FromString,
            )
            assert ready(pb.ModelReadyRequest(name="iris"), timeout=10.0).ready
    finally:
        proc.terminate()
        proc.wait(30)


def test_a_taken_port_names_an_option_demo_takes(example_repo: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["demo", "--cache", str(example_repo), "--port", str(free_port()), "--probe-port", "0"]
        result = ferry(*args, "--grpc-port", str(port))
    assert result.returncode == 1, result.stderr
    line = result.stderr.strip().splitlines()[-1]  # after demo's own "serving the examples from ..." line
    assert line.startswith("error: ") and f"--grpc-port {port}" in line and "in use" in line, result.stderr
    help_text = ferry("demo", "--help").stdout
    assert "--grpc-port" in help_text and "--probe-port" in help_text
