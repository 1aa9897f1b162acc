"""A gzip request body is decompressed once, whether it reaches a model through ``ferry serve --routes`` or through
``ferry gateway``: a real gzip body; the gateway and its upstream are real servers on loopback, ``--routes`` runs
in process (``tests/inprocess.py``)."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from inprocess import inprocess_fixture  # noqa: F401 (the fixture)
from test_slow_clients import start_gateway

IRIS = {"length": 5.1, "width": 2.4}
ROUTES = {
    "name": "router",
    "rules": [{"name": "by-body", "match": {"body": {"length": 5.1}}, "to": {"model": "iris"}}],
    "default": {"to": {"model": "iris"}},
}


@pytest.fixture(scope="module")
def iris_repo(tmp_path_factory: pytest.TempPathFactory, example_repo: Path) -> Path:
    repo = tmp_path_factory.mktemp("gzip")
    shutil.copytree(example_repo / "iris", repo / "iris")
    return repo


def _gzip_post(url: str, client: httpx.Client | None = None) -> httpx.Response:
    body = gzip.compress(orjson.dumps(IRIS))
    headers = {"content-type": "application/json", "content-encoding": "gzip"}
    return (client or httpx).post(url, content=body, headers=headers, timeout=10)


def test_a_gzip_body_on_a_routed_path_is_decompressed_once(inprocess: Any, iris_repo: Path, tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(yaml.safe_dump(ROUTES))
    client = inprocess(iris_repo, "--routes", str(path)).client
    for route in ("/models/router/predict", "/predict"):  # the router's name, and a root compatibility route
        answer = _gzip_post(route, client)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"prediction": "virginica"}
        assert answer.headers["x-ferry-route"] == "by-body"  # the rule read the decompressed body
    # Unrouted paths were never touched by the router, and gzip works there as before.
    assert _gzip_post("/models/iris/predict", client).json() == {"prediction": "virginica"}


def test_a_gzip_body_through_the_gateway_is_decompressed_once(serve: Any, iris_repo: Path, tmp_path: Path) -> None:
    upstream = serve(str(iris_repo))
    gateway, port = start_gateway(upstream.url, tmp_path, rules=ROUTES["rules"])
    try:
        answer = _gzip_post(f"http://127.0.0.1:{port}/predict")
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"prediction": "virginica"}
        assert answer.headers["x-ferry-route"] == "by-body"  # the rule read the body decompressed
    finally:
        gateway.terminate()
        gateway.wait(10)
