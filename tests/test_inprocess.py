"""The in-process harness (``tests/inprocess.py``) answers as a ``ferry serve`` process does, byte for byte."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import ServerProcess
from inprocess import InProcessServer

IRIS = {"length": 5.1, "width": 2.4}
V2 = {"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP64", "data": [5.1, 2.4]}]}
# (method, path, body)
REQUESTS: list[tuple[str, str, Any]] = [
    ("POST", "/models/iris/predict", IRIS),
    ("POST", "/v2/models/iris/infer", V2),
    ("POST", "/v1/models/iris:predict", {"instances": [[5.1, 2.4]]}),
    ("POST", "/models/iris/predict", {"length": "long"}),
    ("POST", "/models/nope/predict", IRIS),
    ("GET", "/models/iris/predict", None),
    ("GET", "/v2/models/iris", None),
    ("GET", "/no/such/route", None),
    ("HEAD", "/health", None),
]


@pytest.fixture(scope="module")
def inprocess_examples(example_repo: Path) -> Iterator[InProcessServer]:
    server = InProcessServer(example_repo)
    yield server
    server.stop()


@pytest.mark.parametrize(("method", "path", "body"), REQUESTS, ids=[f"{m} {p}" for m, p, _ in REQUESTS])
def test_in_process_answers_as_the_process_does(
    examples_server: ServerProcess, inprocess_examples: InProcessServer, method: str, path: str, body: Any
) -> None:
    headers = {"x-request-id": "same"}
    process = httpx.request(method, examples_server.url + path, json=body, headers=headers, timeout=10)
    inprocess = inprocess_examples.client.request(method, path, json=body, headers=headers)
    assert (inprocess.status_code, inprocess.content) == (process.status_code, process.content)
    assert _headers(inprocess) == _headers(process)


def _headers(response: httpx.Response) -> list[tuple[str, str]]:
    return [(k, "(a date)" if k == "date" else v) for k, v in response.headers.multi_items()]


def test_the_connections_hand_whole_requests_to_the_pipeline(inprocess_examples: InProcessServer) -> None:
    """As in ``ferry serve``: the connection class answers a whole request from the app's pipeline."""
    assert inprocess_examples.config.whole_requests is inprocess_examples.app
    before = inprocess_examples.plane.metrics.render().decode()
    assert inprocess_examples.client.post("/models/iris/predict", json=IRIS).json() == {"prediction": "virginica"}
    assert inprocess_examples.plane.metrics.render().decode() != before
