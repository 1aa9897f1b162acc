"""One data plane: the same request gets the same behaviour on every protocol.

One parametrised fixture, ``proto``, speaks each protocol (native, a compatibility route, OIP v2
REST, KServe v1, Seldon, OIP v2 gRPC) to one real ``ferry serve`` over a slow model, with a token
and a small body limit, and every test runs over all of them: deadlines, auth, limits, the error
JSON, the request-ID echo, the metrics labels, the logging policy and compressed bodies.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import re
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

import ferry
from conftest import ServerProcess, free_port
from ferry.grpc import inference_pb2 as pb
from ferry.grpc import inference_pb2_grpc as pb_grpc

SLEEPY = Path(__file__).parent / "models" / "sleepy.py"
SLEEP_S = 1.0  # a request the model answered would take this long; a 0.1 s deadline answers far sooner
TOKEN = "s3cret"
LIMIT = 4096
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# gRPC status -> the HTTP status the REST protocols answer for the same failure.
GRPC_AS_HTTP = {
    "OK": 200,
    "INVALID_ARGUMENT": 400,
    "UNAUTHENTICATED": 401,
    "NOT_FOUND": 404,
    "RESOURCE_EXHAUSTED": 413,
    "DEADLINE_EXCEEDED": 504,
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("dataplane")
    spec = importlib.util.spec_from_file_location("sleepy", SLEEPY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ferry.build(
        module.Sleepy,
        "sleepy",
        repo,
        version="1",
        input_schema={"kind": "tensor", "tensors": [{"name": "x", "shape": [-1, -1]}]},
        sample_input=[1.0],
        routes=[{"method": "POST", "path": "/sleep"}],
    )
    grpc_port = free_port()
    args = [str(repo), "--grpc-port", str(grpc_port), "--auth-tokens", TOKEN, "--max-body-bytes", str(LIMIT)]
    process = ServerProcess(args, env={"FERRY_TEST_SLEEP": str(SLEEP_S)}, wait_ready=False)
    process.wait(ready=False)
    deadline = time.monotonic() + 30
    while httpx.get(process.url + "/ready").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    process.grpc_url = f"127.0.0.1:{grpc_port}"  # type: ignore[attr-defined]
    yield process
    process.stop()


@dataclass
class Reply:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    elapsed: float = 0.0


class Protocol:
    """How one protocol sends rows of the sleepy model's ``x`` tensor, and what it answers."""

    name = ""
    path = ""
    route = ""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server

    def body(self, rows: list[list[float]]) -> Any:
        raise NotImplementedError

    def values(self, reply: Reply) -> Any:
        raise NotImplementedError

    def send(
        self, rows: list[list[float]], headers: dict[str, str] | None = None, content: bytes | None = None
    ) -> Reply:
        started = time.monotonic()
        merged = {**AUTH, **(headers or {})}
        if content is None:
            content = json.dumps(self.body(rows)).encode()
        merged.setdefault("Content-Type", "application/json")
        response = httpx.post(self.server.url + self.path, content=content, headers=merged, timeout=10)
        body = response.json() if response.headers.get("content-type", "").startswith("application/json") else None
        return Reply(response.status_code, body, dict(response.headers), time.monotonic() - started)


class Native(Protocol):
    name, path, route = "native", "/models/sleepy/predict", "model/predict"

    def body(self, rows: list[list[float]]) -> Any:
        return rows

    def values(self, reply: Reply) -> Any:
        return reply.body["predictions"]


class Compat(Native):
    name, path, route = "compat", "/sleep", "compat:/sleep"

    def values(self, reply: Reply) -> Any:
        return reply.body["prediction"]  # the manifest's default response_key


class V2(Protocol):
    name, path, route = "v2", "/v2/models/sleepy/infer", "v2:infer"

    def body(self, rows: list[list[float]]) -> Any:
        shape = [len(rows), len(rows[0])]
        return {"inputs": [{"name": "x", "datatype": "FP64", "shape": shape, "data": rows}]}

    def values(self, reply: Reply) -> Any:
        output = reply.body["outputs"][0]
        width = output["shape"][1]
        return [output["data"][i : i + width] for i in range(0, len(output["data"]), width)]


class KServe(Protocol):
    name, path, route = "kserve", "/v1/models/sleepy:predict", "v1:predict"

    def body(self, rows: list[list[float]]) -> Any:
        return {"instances": rows}

    def values(self, reply: Reply) -> Any:
        return reply.body["predictions"]


class Seldon(Protocol):
    name, path, route = "seldon", "/seldon/sleepy/api/v1.0/predictions", "seldon:predictions"

    def body(self, rows: list[list[float]]) -> Any:
        return {"data": {"ndarray": rows}}

    def values(self, reply: Reply) -> Any:
        return reply.body["data"]["ndarray"]


class Grpc(Protocol):
    name, route = "grpc", "grpc:ModelInfer"

    def body(self, rows: list[list[float]]) -> Any:
        request = pb.ModelInferRequest(model_name="sleepy")
        tensor = request.inputs.add(name="x", datatype="FP64", shape=[len(rows), len(rows[0])])
        tensor.contents.fp64_contents.extend(v for row in rows for v in row)
        return request

    def values(self, reply: Reply) -> Any:
        output = reply.body.outputs[0]
        flat, width = list(output.contents.fp64_contents), output.shape[1]
        return [flat[i : i + width] for i in range(0, len(flat), width)]

    def send(
        self,
        rows: list[list[float]],
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
        timeout: float = 10.0,
        compression: grpc.Compression | None = None,
    ) -> Reply:
        headers = {**AUTH, **(headers or {})}
        metadata = [(k.lower(), v) for k, v in headers.items() if k.lower() in ("authorization", "x-api-key")]
        started = time.monotonic()
        with grpc.insecure_channel(self.server.grpc_url) as channel:  # type: ignore[attr-defined]
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            try:
                reply = stub.ModelInfer(self.body(rows), timeout=timeout, metadata=metadata, compression=compression)
            except grpc.RpcError as exc:
                code = exc.code().name
                return Reply(GRPC_AS_HTTP.get(code, 500), {"error": exc.details(), "code": code}, {}, _since(started))
        return Reply(200, reply, {}, _since(started))


def _since(started: float) -> float:
    return time.monotonic() - started


PROTOCOLS = [Native, Compat, V2, KServe, Seldon, Grpc]
HTTP_ONLY = [p for p in PROTOCOLS if p is not Grpc]


@pytest.fixture(params=PROTOCOLS, ids=lambda p: p.name)
def proto(request: pytest.FixtureRequest, server: ServerProcess) -> Protocol:
    protocol: Protocol = request.param(server)
    return protocol


@pytest.fixture(params=HTTP_ONLY, ids=lambda p: p.name)
def http_proto(request: pytest.FixtureRequest, server: ServerProcess) -> Protocol:
    protocol: Protocol = request.param(server)
    return protocol


def counter(server: ServerProcess, name: str, **labels: str) -> float:
    text = httpx.get(server.url + "/metrics").text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_answer_and_metrics_labels(proto: Protocol, server: ServerProcess) -> None:
    status = "OK" if proto.name == "grpc" else "200"
    labels = {"model": "sleepy", "route": proto.route, "protocol": proto.name, "status": status}
    before = counter(server, "ferry_requests_total", **labels)
    reply = proto.send([[1.0, 2.0]])
    assert reply.status == 200, reply.body
    assert proto.values(reply) == [[1.0, 2.0]]
    # Counted under the real model name on every protocol, compatibility routes included.
    assert counter(server, "ferry_requests_total", **labels) == before + 1


def test_client_deadline_lowers_the_servers(proto: Protocol, server: ServerProcess) -> None:
    """The server's deadline is 30 s; the client's 0.1 s wins, as a 504 long before the model would answer."""
    if isinstance(proto, Grpc):
        labels = {"model": "sleepy", "protocol": "grpc", "route": proto.route}
        ended = ("DEADLINE_EXCEEDED", "CANCELLED")
        before = sum(counter(server, "ferry_requests_total", **labels, status=s) for s in ended)
        reply = proto.send([[1.0]], timeout=0.1)
        # The server ended the call within the gRPC deadline too, with its own 504 or by the cancellation.
        deadline = time.monotonic() + 5
        while sum(counter(server, "ferry_requests_total", **labels, status=s) for s in ended) == before:
            assert time.monotonic() < deadline, "the server did not end the gRPC call at its deadline"
            time.sleep(0.05)
    else:
        reply = proto.send([[1.0]], {"X-Request-Timeout": "100ms"})
    assert reply.status == 504, reply.body
    assert reply.elapsed < SLEEP_S
    if not isinstance(proto, Grpc):
        assert reply.body["error"] == "request not served within its deadline of 0.1 s"
    # A longer client deadline cannot extend the server's (checked at the unit level: DataPlane.deadline).


def test_bad_deadline_is_400(http_proto: Protocol) -> None:
    reply = http_proto.send([[1.0]], {"X-Request-Timeout": "abc"})
    assert reply.status == 400
    assert reply.body["field"] == "X-Request-Timeout"
    message = "X-Request-Timeout must be seconds or milliseconds, got 'abc' - at `X-Request-Timeout`"
    assert reply.body["error"] == message


def test_auth_is_required(proto: Protocol) -> None:
    reply = proto.send([[1.0]], {"Authorization": "Bearer wrong"})
    assert reply.status == 401
    if not isinstance(proto, Grpc):
        assert reply.headers["www-authenticate"] == "Bearer"
        assert reply.body["code"] == "unauthorized"


def test_body_limit(proto: Protocol) -> None:
    rows = [[float(i)] * 8 for i in range(200)]  # about 8 KB of JSON, 12 KB of protobuf: past the 4 KB limit
    reply = proto.send(rows)
    assert reply.status == 413, reply.body


def _one_tensor_of_shape(proto: Protocol, shape: list[int]) -> Reply:
    """One FP64 value in a tensor declared ``shape``, over v2 REST or gRPC (other protocols carry no shapes)."""
    if isinstance(proto, V2):
        shape_body = {"inputs": [{"name": "x", "datatype": "FP64", "shape": shape, "data": [1.0]}]}
        return proto.send([], content=json.dumps(shape_body).encode())
    if isinstance(proto, Grpc):
        request = pb.ModelInferRequest(model_name="sleepy")
        request.inputs.add(name="x", datatype="FP64", shape=shape).contents.fp64_contents.append(1.0)
        channel = grpc.insecure_channel(proto.server.grpc_url)  # type: ignore[attr-defined]
        with channel, pytest.raises(grpc.RpcError) as caught:
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, metadata=[("x-api-key", TOKEN)])
        return Reply(GRPC_AS_HTTP[caught.value.code().name], {"error": caught.value.details()})
    pytest.skip(f"{proto.name} has no tensor shapes: its bound is the body limit")


def test_tensor_limit_is_checked_from_the_shape(proto: Protocol) -> None:
    reply = _one_tensor_of_shape(proto, [1 << 20, 1 << 10])
    assert reply.status == 400
    assert "exceeds the limit of 16777216 elements" in reply.body["error"]


@pytest.mark.parametrize("dims", [33, 100])
def test_more_dimensions_than_an_array_holds_are_a_400(proto: Protocol, dims: int) -> None:
    """[1] * 100 holds one element, but NumPy holds no array of 100 dimensions: a 400 naming the shape, never a 500
    (tests/test_grpc_wire.py: a gRPC message of many thousands of them is refused before they are unpacked)."""
    reply = _one_tensor_of_shape(proto, [1] * dims)
    assert reply.status == 400
    assert "shape has more than 32 dimensions" in reply.body["error"]


def test_error_json_has_one_shape_with_the_request_id(http_proto: Protocol) -> None:
    reply = http_proto.send([[1.0]], {"X-Request-ID": "trace-me-42"}, content=b'{"inputs": [')
    assert reply.status == 400
    assert reply.headers["x-request-id"] == "trace-me-42"
    assert set(reply.body) == {"error", "code", "request_id"}
    assert reply.body["code"] == "malformed_json" and reply.body["request_id"] == "trace-me-42"


def test_request_id_is_echoed(http_proto: Protocol) -> None:
    reply = http_proto.send([[1.0]], {"X-Request-ID": "abc-123"})
    assert reply.status == 200 and reply.headers["x-request-id"] == "abc-123"
    made = http_proto.send([[1.0]])
    assert re.fullmatch(r"[0-9a-f]{12}-[0-9a-f]+", made.headers["x-request-id"])


def test_expected_5xx_are_counted_not_logged(proto: Protocol, server: ServerProcess) -> None:
    before = counter(server, "ferry_errors_total", model="sleepy", code="deadline_exceeded")
    if isinstance(proto, Grpc):
        # A gRPC client's own deadline also ends the call on the server: counted as exceeded or cancelled.
        proto.send([[1.0]], timeout=0.1)
    else:
        proto.send([[1.0]], {"X-Request-Timeout": "0.1"})
        assert counter(server, "ferry_errors_total", model="sleepy", code="deadline_exceeded") == before + 1
    time.sleep(0.2)
    logged = [line for line in server.output().splitlines() if '"level": "error"' in line or " ERROR " in line]
    assert not [line for line in logged if "deadline" in line], logged


def test_compressed_bodies(proto: Protocol) -> None:
    if isinstance(proto, Grpc):
        reply = proto.send([[1.0, 2.0]], compression=grpc.Compression.Gzip)
        assert reply.status == 200 and proto.values(reply) == [[1.0, 2.0]]
        return
    raw = json.dumps(proto.body([[1.0, 2.0]])).encode()
    for encoding, packed in (("gzip", gzip.compress(raw)), ("deflate", zlib.compress(raw))):
        reply = proto.send([], {"Content-Encoding": encoding}, content=packed)
        assert reply.status == 200, (encoding, reply.body)
        assert proto.values(reply) == [[1.0, 2.0]]
    # A bomb: 80 bytes on the wire, a megabyte inflated; refused once it passes the body limit.
    bomb = gzip.compress(b" " * (1 << 20))
    assert len(bomb) < LIMIT
    reply = proto.send([], {"Content-Encoding": "gzip"}, content=bomb)
    assert reply.status == 413
    assert reply.body["error"] == f"decompressed request body exceeds the limit of {LIMIT} bytes"
    reply = proto.send([], {"Content-Encoding": "br"}, content=raw)
    assert reply.status == 415 and reply.body["code"] == "unsupported_encoding"
    # Cut short, or followed by more (a second gzip member, anything): a 400, never served as what it inflates to.
    for damaged, says in ((gzip.compress(raw)[:-8], "truncated"), (gzip.compress(raw) * 2, "bytes after its gzip")):
        reply = proto.send([], {"Content-Encoding": "gzip"}, content=damaged)
        assert reply.status == 400 and says in reply.body["error"], reply.body


# -- in process: the pieces the matrix rests on ---------------------------------------------------------
def test_every_ferry_error_lives_in_errors_py_and_is_drawn_there() -> None:
    import importlib
    import pkgutil

    import ferry.errors

    for module in pkgutil.walk_packages(ferry.__path__, "ferry."):
        if module.name == "ferry.__main__":  # runs the CLI
            continue
        try:
            importlib.import_module(module.name)
        except ImportError:  # an optional extra that is not installed
            continue
    pending, found = [ferry.errors.FerryError], []
    while pending:
        for sub in pending.pop().__subclasses__():
            found.append(sub)
            pending.append(sub)
    assert {cls.__module__ for cls in found} == {"ferry.errors"}, [c for c in found if c.__module__ != "ferry.errors"]
    drawn = ferry.errors.__doc__ or ""
    assert [cls.__name__ for cls in found if cls.__name__ not in drawn] == []


def test_deadline_a_client_may_only_lower(example_repo: Path) -> None:
    from ferry.serving.dataplane import DataPlane
    from ferry.serving.metrics import Metrics
    from ferry.serving.registry import ModelRegistry
    from ferry.serving.service import InferenceService

    registry = ModelRegistry(example_repo)
    registry.load(registry.models["iris"]["1"])
    metrics = Metrics()
    plane = DataPlane(registry, InferenceService(registry, metrics), metrics, request_timeout=2.0)
    handle = registry.get("iris")
    assert plane.deadline(handle, None) == 2.0
    assert plane.deadline(handle, 0.5) == 0.5
    assert plane.deadline(handle, 60.0) == 2.0  # never extended past the server's (or the model's) own
    plane.service.close()


def test_the_predict_table_follows_the_registry(example_repo: Path, tmp_path: Path) -> None:
    import shutil

    from ferry.http.dispatch import PredictRoutes
    from ferry.serving.registry import ModelHandle, ModelRegistry

    repo = tmp_path / "repo"
    shutil.copytree(example_repo / "iris", repo / "iris")
    registry = ModelRegistry(repo)
    routes = PredictRoutes(registry)
    assert "/models/iris/versions/1/predict" in routes.table()["POST"]
    assert "/models/iris/versions/2/predict" not in routes.table()["POST"]
    shutil.copytree(repo / "iris" / "1", repo / "iris" / "2")
    handle = ModelHandle("iris", "2", repo / "iris" / "2")
    registry.load(handle)
    registry.activate(handle)  # as the admin API and --watch do
    table = routes.table()["POST"]
    assert table["/models/iris/versions/2/predict"].version == "2"
    assert table["/v2/models/iris/versions/2/infer"].codec.protocol == "v2"
    assert table["/predict"].codec.protocol == "compat"  # the compatibility route of the newest manifest
