"""Shared fixtures: example bundles built once, and real ``ferry serve`` processes on free loopback ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ferry.examples import build_examples

# The suite starts hundreds of `python -m ferry` children; each would compile Ferry's own modules again where the
# environment says not to cache bytecode (the site packages come compiled). Let them cache it: __pycache__ is
# ignored by git, and a bundle never gets one (the server loads a bundle's code with sys.dont_write_bytecode, and
# tests/test_byom.py checks that).
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def models_when_loaded(url: str, timeout: float = 60.0) -> dict[str, dict[str, Any]]:
    """``/ready``'s models by name, once none is still LOADING (a FAILED one has its ``error``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            models = {m["name"]: m for m in httpx.get(url + "/ready").json()["models"]}
        except httpx.TransportError:
            models = {}
        if models and all(m["state"] != "LOADING" for m in models.values()):
            return models
        time.sleep(0.05)
    raise AssertionError(f"models still loading after {timeout:g} s")


@pytest.fixture(scope="session")
def example_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("examples")
    build_examples(repo)
    return repo


@pytest.fixture(scope="session")
def image_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The two image classifiers of the routing reference (general and plants), built once."""
    repo = tmp_path_factory.mktemp("images")
    build_examples(repo, ["general", "plants"])
    return repo


class ServerProcess:
    """A ``ferry serve`` child process; ``url`` is its base address."""

    grpc_port = 0  # off, unless the args turn it on

    def __init__(self, args: list[str], env: dict[str, str] | None = None, wait_ready: bool = True) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"ferry-serve-{self.port}.log"
        self.log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ferry", "serve", *args, "--port", str(self.port)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            # Ports are exclusive: gRPC and the probe port are off unless a test asks for them. The repositories
            # served here hold Ferry's own classes (the `score` example, test models), which the test, as the
            # operator, trusts like `ferry demo` does; --trust-code allows pickles too, so a test of a refusal
            # passes env={"FERRY_TRUST_CODE": "0"}. tests/test_trust_code.py checks the default (off).
            env={"FERRY_GRPC_PORT": "0", "FERRY_PROBE_PORT": "0", "FERRY_TRUST_CODE": "1", **os.environ, **(env or {})},
        )
        self.wait(ready=wait_ready)

    def wait(self, ready: bool, timeout: float = 60.0) -> None:
        path = "/ready" if ready else "/health"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ferry serve exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + path, timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"ferry serve not {'ready' if ready else 'up'} after {timeout}s:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


@pytest.fixture
def serve() -> Iterator[Callable[..., ServerProcess]]:
    """Start ``ferry serve ARGS`` processes; all are stopped at the end of the test."""
    started: list[ServerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None, wait_ready: bool = True) -> ServerProcess:
        server = ServerProcess(list(args), env=env, wait_ready=wait_ready)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def examples_server(example_repo: Path) -> Iterator[ServerProcess]:
    """One server over all the reference examples, shared by every module that only sends it requests: a test that
    needs counters of its own, a flag, or to stop the server starts its own with ``serve``."""
    server = ServerProcess([str(example_repo)])
    yield server
    server.stop()


@pytest.fixture(scope="session")
def grpc_examples_server(example_repo: Path) -> Iterator[ServerProcess]:
    """The same, with gRPC on ``grpc_port`` (``ferry serve models --grpc-port PORT``), shared the same way."""
    port = free_port()
    server = ServerProcess([str(example_repo), "--grpc-port", str(port)])
    server.grpc_port = port
    yield server
    server.stop()


def run_ferry(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m ferry ARGS`` in a child process, output captured, on a wide terminal (help text unwrapped)."""
    return subprocess.run(
        [sys.executable, "-m", "ferry", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        timeout=60,
        check=False,
        cwd=cwd,
    )
