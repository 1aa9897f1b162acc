"""One data plane answers what a client may ask of a model: the same metadata and readiness over native HTTP,
Open Inference v2 REST, the probe port and gRPC, each counted once in the request metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from conftest import ServerProcess, free_port
from ferry.grpc import inference_pb2 as pb
from ferry.grpc import inference_pb2_grpc as pb_grpc


@pytest.fixture(scope="module")
def ports() -> tuple[int, int]:
    return free_port(), free_port()


@pytest.fixture(scope="module")
def server(example_repo: Path, ports: tuple[int, int]) -> Iterator[ServerProcess]:
    grpc_port, probe_port = ports
    process = ServerProcess([str(example_repo), "--grpc-port", str(grpc_port), "--probe-port", str(probe_port)])
    yield process
    process.stop()


@pytest.fixture(scope="module")
def stub(server: ServerProcess, ports: tuple[int, int]) -> Iterator[Any]:
    with grpc.insecure_channel(f"127.0.0.1:{ports[0]}") as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def probe(ports: tuple[int, int]) -> str:
    return f"http://127.0.0.1:{ports[1]}"


def test_metadata_agrees_on_every_transport(server: ServerProcess, stub: Any) -> None:
    native = httpx.get(f"{server.url}/models/iris/metadata").json()
    v2 = httpx.get(f"{server.url}/v2/models/iris").json()
    over_grpc = stub.ModelMetadata(pb.ModelMetadataRequest(name="iris"))
    assert native["name"] == v2["name"] == over_grpc.name == "iris"
    assert native["versions"] == v2["versions"] == list(over_grpc.versions)
    assert v2["platform"] == over_grpc.platform == f"ferry_{native['runtime']}"
    assert [t["name"] for t in v2["inputs"]] == [t.name for t in over_grpc.inputs]
    assert [t["name"] for t in v2["outputs"]] == [t.name for t in over_grpc.outputs]
    assert native["explanation"] == v2["explanation"]


def test_readiness_agrees_on_every_transport(server: ServerProcess, stub: Any, probe: str) -> None:
    native, on_probe = httpx.get(f"{server.url}/ready"), httpx.get(f"{probe}/ready")
    assert native.status_code == on_probe.status_code == 200
    assert native.json() == on_probe.json()  # one answer: every version's state, and the same order
    assert native.json()["ready"] is True
    assert httpx.get(f"{server.url}/v2/health/ready").json() == {"ready": True}
    assert stub.ServerReady(pb.ServerReadyRequest()).ready is True
    assert stub.ServerLive(pb.ServerLiveRequest()).live is True
    assert httpx.get(f"{server.url}/models/iris/health").status_code == 200
    assert httpx.get(f"{server.url}/v2/models/iris/ready").json()["ready"] is True
    assert stub.ModelReady(pb.ModelReadyRequest(name="iris")).ready is True


@pytest.mark.parametrize(
    "ask",
    [
        lambda url, stub: httpx.get(f"{url}/models/nope/metadata").status_code,
        lambda url, stub: httpx.get(f"{url}/v2/models/nope").status_code,
        lambda url, stub: httpx.get(f"{url}/v2/models/nope/ready").status_code,
        lambda url, stub: httpx.get(f"{url}/models/nope/labels").status_code,
    ],
)
def test_an_unknown_model_is_404_on_every_http_route(server: ServerProcess, stub: Any, ask: Callable[..., int]) -> None:
    assert ask(server.url, stub) == 404


def test_an_unknown_model_is_not_found_over_grpc(stub: Any) -> None:
    for call, request in ((stub.ModelReady, pb.ModelReadyRequest), (stub.ModelMetadata, pb.ModelMetadataRequest)):
        with pytest.raises(grpc.RpcError) as caught:
            call(request(name="nope"))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert "model 'nope' not found" in (caught.value.details() or "")


def test_every_transport_counts_in_one_metric_family(server: ServerProcess, stub: Any) -> None:
    httpx.get(f"{server.url}/models/iris/metadata")
    httpx.get(f"{server.url}/v2/models/iris")
    httpx.get(f"{server.url}/models/iris/labels")
    stub.ModelMetadata(pb.ModelMetadataRequest(name="iris"))
    text = httpx.get(f"{server.url}/metrics").text
    for route, protocol, status in (
        ("model/metadata", "native", "200"),
        ("v2:metadata", "v2", "200"),
        ("model/labels", "native", "200"),
        ("grpc:ModelMetadata", "grpc", "OK"),
    ):
        line = f'ferry_requests_total{{model="iris",protocol="{protocol}",route="{route}",status="{status}"}}'
        assert line in text, route
