"""What needs a token: no bundle can open a route that is not its own health route.

A bundle's manifest is data from whoever built it. Its compatibility routes may declare ``action:
health`` on any path; only an accepted route (not on a built-in prefix, not taken by another model) is
public, for its own method only, and never on a path another route serves. Everything else, the
console's ``GET /`` apart, needs the token, as ``--admin`` itself does unless the operator says otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.linear_model import LinearRegression

import ferry
from conftest import free_port
from inprocess import InProcessServer, inprocess_fixture  # noqa: F401 (the fixture)

TOKEN = "s3cret-boundary"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
IRIS = {"length": 5.1, "width": 2.4}
V2_IRIS = {
    "inputs": [
        {"name": "length", "shape": [1], "datatype": "FP64", "data": [5.1]},
        {"name": "width", "shape": [1], "datatype": "FP64", "data": [2.4]},
    ]
}
_X = np.random.default_rng(0).random((20, 2))


def _health(method: str, path: str) -> dict[str, Any]:
    return {"method": method, "path": path, "action": "health", "response_key": None}


def _bundle(repo: Path, name: str, routes: list[Any]) -> None:
    model = LinearRegression().fit(_X, _X @ [1.0, 2.0])
    ferry.build(model, name, repo, version="1", features=["a", "b"], routes=routes)


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    path.write_text(f"# the one token\n{TOKEN}\n")
    return path


def test_health_routes_open_only_themselves(
    inprocess: Any, example_repo: Path, tmp_path: Path, tokens_file: Path
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(example_repo / "iris", repo / "iris")
    # "evil" declares health routes on iris's predict routes, the admin API, the repository index and
    # iris's own compatibility path, and predicts under /static/; it has one honest health route too.
    _bundle(
        repo,
        "evil",
        [
            _health("GET", "/v2/models/iris/infer"),
            _health("GET", "/models/iris/unload"),
            _health("GET", "/v2/repository/index"),
            _health("GET", "/predict"),  # iris serves POST /predict
            {"method": "POST", "path": "/static/predict", "response_key": "prediction"},
            _health("GET", "/evil/alive"),
        ],
    )
    server: InProcessServer = inprocess(repo, "--auth-tokens-file", str(tokens_file), "--admin")
    client = server.client

    refused = {
        "POST /v2/models/iris/infer": client.post("/v2/models/iris/infer", json=V2_IRIS),
        "POST /v2/repository/index": client.post("/v2/repository/index", json={}),
        "POST /predict": client.post("/predict", json=IRIS),
        "GET /predict": client.get("/predict"),  # the path iris serves: never public
        "POST /static/predict": client.post("/static/predict", json={"a": 1.0, "b": 1.0}),
        "HEAD /evil/alive": client.head("/evil/alive"),  # the route's own method only
        "POST /models/iris/unload": client.post("/models/iris/unload"),
    }
    assert {k: r.status_code for k, r in refused.items()} == dict.fromkeys(refused, 401)
    assert refused["POST /predict"].json()["code"] == "unauthorized"

    # The honest health route, and the built-in probes, still need no token.
    assert client.get("/evil/alive").json() is True
    assert client.get("/health").json() == {"health": "ok"}
    assert client.get("/v2/health/ready").status_code == 200
    # With the token, everything answers as before, and iris was never unloaded.
    assert client.post("/predict", json=IRIS, headers=BEARER).json() == {"prediction": "virginica"}
    assert client.post("/v2/models/iris/infer", json=V2_IRIS, headers=BEARER).status_code == 200
    assert client.post("/v2/repository/index", json={}, headers=BEARER).status_code == 200
    assert client.post("/static/predict", json={"a": 1.0, "b": 1.0}, headers=BEARER).status_code == 200
    assert "compatibility route GET /models/iris/unload clashes with a built-in route; ignored" in server.output()


def test_a_predict_route_at_the_root_needs_the_token(
    inprocess: Any, example_repo: Path, tmp_path: Path, tokens_file: Path
) -> None:
    repo = tmp_path / "repo"
    _bundle(repo, "rooted", [{"method": "POST", "path": "/", "response_key": "prediction"}])
    client = inprocess(repo, "--auth-tokens-file", str(tokens_file)).client
    row = {"a": 1.0, "b": 1.0}
    denied = client.post("/", json=row)
    assert denied.status_code == 401, denied.text
    allowed = client.post("/", json=row, headers=BEARER)
    assert allowed.status_code == 200 and allowed.json()["prediction"] == pytest.approx(3.0)
    # Nothing is public under /static/ either: no route serves it.
    assert client.get("/static/console.html").status_code == 401


def test_the_console_page_alone_is_public_at_the_root(inprocess: Any, example_repo: Path, tokens_file: Path) -> None:
    client = inprocess(example_repo, "--auth-tokens-file", str(tokens_file)).client
    page = client.get("/", headers={"accept": "text/html"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert client.get("/").json() == {"status": "alive"}
    assert client.post("/", json=IRIS).status_code == 401
    assert client.get("/isAlive").json() is True  # diabetes's compatibility health route
    assert client.post("/isAlive").status_code == 401


# -- --admin needs auth, or the operator's explicit --admin-unauthenticated ---------------------------------
def _start(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ferry", "serve", *args, "--port", str(free_port()), "--grpc-port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_admin_without_auth_refuses_to_start(example_repo: Path) -> None:
    done = _start(str(example_repo), "--admin")
    assert done.returncode == 2, done.stdout + done.stderr  # a usage error, like a bad --max-memory
    assert "error: --admin without --auth-tokens or --auth-tokens-file" in done.stderr
    assert "--admin-unauthenticated" in done.stderr
    assert "Traceback" not in done.stderr
    # The environment is the same setting: FERRY_ADMIN=1 alone refuses too.
    env_done = subprocess.run(
        [sys.executable, "-m", "ferry", "serve", str(example_repo), "--port", str(free_port()), "--grpc-port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "FERRY_ADMIN": "1"},
    )
    assert env_done.returncode == 2 and "--admin-unauthenticated" in env_done.stderr


def test_admin_unauthenticated_on_purpose_serves_the_admin_routes(
    inprocess: Any, example_repo: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(example_repo / "iris", repo / "iris")
    server: InProcessServer = inprocess(repo, "--admin", "--admin-unauthenticated")
    assert server.client.post("/models/iris/reload").status_code == 200
    assert "admin routes are open to anyone" in server.output()


def test_admin_with_tokens_guards_the_admin_routes(
    inprocess: Any, example_repo: Path, tmp_path: Path, tokens_file: Path
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(example_repo / "iris", repo / "iris")
    client = inprocess(repo, "--admin", "--auth-tokens-file", str(tokens_file)).client
    assert client.post("/models/iris/reload").status_code == 401
    assert client.post("/models/iris/reload", headers=BEARER).status_code == 200
