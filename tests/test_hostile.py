"""Hostile bodies on every JSON route of a real server: each is a 4xx JSON error that names the problem."""

from __future__ import annotations

import httpx
import pytest

from conftest import ServerProcess

ROUTES = {
    "native": "/models/iris/predict",
    "kserve-v1": "/v1/models/iris:predict",
    "v2": "/v2/models/iris/infer",
    "seldon": "/seldon/iris/api/v1.0/predictions",
}
HOSTILE = [
    (b"[1e400,", "malformed JSON"),
    (b"1" * 5_000, "integer with 5000 digits is out of range"),
    (b"[1e400, " + b"[" * 50_000 + b"]" * 50_000 + b"]", "JSON is nested too deeply"),
    (b'{"inputs": [{"data": [' + b"7" * 4_301 + b"]}]}", "integer with 4301 digits is out of range"),
]


@pytest.fixture(scope="module")
def client(examples_server: ServerProcess) -> httpx.Client:
    return httpx.Client(base_url=examples_server.url, timeout=30.0)


@pytest.mark.parametrize("route", ROUTES.values(), ids=ROUTES.keys())
@pytest.mark.parametrize(("body", "error"), HOSTILE, ids=["truncated-1e400", "5000-digits", "1e400-deep", "v2-4301"])
def test_hostile_json_is_a_4xx_naming_the_problem(client: httpx.Client, route: str, body: bytes, error: str) -> None:
    response = client.post(route, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    assert error in response.json()["error"]


def test_seldon_tensor_shape_cannot_overflow_the_size_check(client: httpx.Client) -> None:
    body = {"data": {"tensor": {"shape": [4294967296, 4294967296], "values": []}}}
    response = client.post(ROUTES["seldon"], json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == (
        f"shape [4294967296, 4294967296] holds {2**64} values but `values` has 0 - at `$.data.tensor.values`"
    )


def test_seldon_data_with_both_ndarray_and_tensor_is_refused(client: httpx.Client) -> None:
    # A oneof in Seldon's proto: the tensor was silently dropped and the ndarray answered.
    body = {"data": {"ndarray": [[5.1, 2.4]], "tensor": {"shape": [1, 2], "values": [1.0, 0.1]}}}
    response = client.post(ROUTES["seldon"], json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "send one of `ndarray` or `tensor` in `data`; got both - at `$.data`"
