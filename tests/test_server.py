"""End to end: a real ``ferry serve`` process over the reference examples, every native route and error; a test that
needs flags or a repository of its own runs Ferry in process (``tests/inprocess.py``), composed as ``ferry serve``."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import ServerProcess
from inprocess import InProcessServer, inprocess_fixture  # noqa: F401 (the fixture)


@pytest.fixture(scope="module")
def client(examples_server: ServerProcess) -> httpx.Client:
    return httpx.Client(base_url=examples_server.url, timeout=10.0)


def post(client: httpx.Client, path: str, body: Any) -> httpx.Response:
    return client.post(path, json=body)


# -- server-wide routes -----------------------------------------------------------------------------
def test_health(client: httpx.Client) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"health": "ok"}


def test_ready_lists_every_model(client: httpx.Client) -> None:
    response = client.get("/ready")
    assert response.status_code == 200
    body = response.json()
    assert body["ready"] is True
    assert {(m["name"], m["state"]) for m in body["models"]} == {
        ("iris", "READY"),
        ("diabetes", "READY"),
        ("score", "READY"),
        ("reviews", "READY"),
    }


def test_models_lists_versions_and_states(client: httpx.Client) -> None:
    models = {m["name"]: m for m in client.get("/models").json()["models"]}
    assert set(models) == {"iris", "diabetes", "score", "reviews"}
    assert models["iris"]["default_version"] == "1"
    [iris] = models["iris"]["versions"]
    assert iris == {"name": "iris", "version": "1", "state": "READY", "bytes": iris["bytes"]}
    assert iris["bytes"] > 64 * 1024  # estimated from its compiled arrays, plus the objects around them


def test_metrics_count_requests_per_model_and_route(client: httpx.Client) -> None:
    post(client, "/models/iris/predict", {"length": 5.1, "width": 2.4})
    text = client.get("/metrics").text
    assert 'ferry_requests_total{model="iris",protocol="native",route="model/predict",status="200"}' in text
    assert 'ferry_request_duration_seconds_bucket{le="0.001",model="iris",route="model/predict"}' in text
    assert 'ferry_predict_calls_total{model="iris",version="1"}' in text


# -- per-model routes -------------------------------------------------------------------------------
def test_metadata(client: httpx.Client) -> None:
    body = client.get("/models/iris/metadata").json()
    assert body["name"] == "iris" and body["version"] == "1" and body["versions"] == ["1"]
    assert [f["name"] for f in body["input"]["features"]] == ["length", "width"]
    assert body["labels"] == ["setosa", "versicolor", "virginica"]
    assert body["metadata"]["metrics"]["accuracy"] == pytest.approx(0.8889, abs=1e-4)
    assert body["sample_input"] == {"length": 5.1, "width": 2.4}


def test_labels(client: httpx.Client) -> None:
    assert client.get("/models/iris/labels").json() == {"labels": ["setosa", "versicolor", "virginica"]}
    assert client.get("/models/diabetes/labels").json() == {"labels": []}


def test_model_health_and_pinned_version(client: httpx.Client) -> None:
    assert client.get("/models/iris/health").json() == {"health": "ok", "name": "iris", "version": "1"}
    pinned = post(client, "/models/iris/versions/1/predict", {"length": 5.1, "width": 2.4})
    assert pinned.json() == {"prediction": "virginica"}
    missing = client.get("/models/iris/versions/9/metadata")
    assert missing.status_code == 404
    assert missing.json()["error"] == "model 'iris' has no version '9'; versions: 1"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"length": 5.1, "width": 2.4}, {"prediction": "virginica"}),
        ([5.1, 2.4], {"prediction": "virginica"}),
        ([{"length": 5.1, "width": 2.4}, {"length": 1.4, "width": 0.2}], {"predictions": ["virginica", "setosa"]}),
        ([[5.1, 2.4], [1.4, 0.2], [4.5, 1.5]], {"predictions": ["virginica", "setosa", "versicolor"]}),
        ({"instances": [[1.4, 0.2]]}, {"predictions": ["setosa"]}),
        ({"instances": [{"length": 4.5, "width": 1.5}]}, {"predictions": ["versicolor"]}),
    ],
)
def test_predict_body_forms(client: httpx.Client, body: Any, expected: dict[str, Any]) -> None:
    response = post(client, "/models/iris/predict", body)
    assert response.status_code == 200
    assert response.json() == expected


def test_predict_test_runs_the_sample(client: httpx.Client) -> None:
    assert client.get("/models/iris/predict/test").json() == {
        "input": {"length": 5.1, "width": 2.4},
        "prediction": "virginica",
    }


def test_regression_and_text_models(client: httpx.Client) -> None:
    assert post(client, "/models/diabetes/predict", {"bmi": 0.05}).json()["prediction"] == pytest.approx(199.6, 0.01)
    score = post(client, "/models/reviews/predict", {"text": "最高の映画でした！もう一度観たいです。"}).json()
    assert isinstance(score["prediction"], float) and 1.0 <= score["prediction"] <= 5.0
    many = post(client, "/models/reviews/predict", [{"text": "つまらない"}, {"text": "感動した"}]).json()
    assert len(many["predictions"]) == 2


# -- compatibility routes (declared in the example manifests) ---------------------------------------
def test_iris_compat_route(client: httpx.Client) -> None:
    assert post(client, "/predict", {"length": 5.1, "width": 2.4}).json() == {"prediction": "virginica"}


def test_diabetes_compat_routes(client: httpx.Client) -> None:
    alive = client.get("/isAlive")
    assert alive.status_code == 200 and alive.json() is True
    prediction = client.get("/prediction/", params={"f": 0.05})
    assert prediction.json() == pytest.approx(199.6, abs=0.05)


def test_score_compat_route(client: httpx.Client) -> None:
    assert post(client, "/score", {"X": [1, 2]}).json() == {"score": [1, 2]}


def test_compat_route_errors(client: httpx.Client) -> None:
    missing = client.get("/prediction/")
    assert missing.status_code == 400
    assert missing.json()["error"] == "missing query parameter 'f' - at `?f`"
    wrong = client.get("/prediction/", params={"f": "abc"})
    assert wrong.status_code == 400 and wrong.json()["field"] == "?f"
    nan = client.get("/prediction/", params={"f": "nan"})
    assert nan.status_code == 400 and "NaN" in nan.json()["error"]
    no_x = post(client, "/score", {"Y": [1]})
    assert no_x.status_code == 400 and no_x.json()["error"] == "missing field 'X' - at `$.X`"


# -- client errors: 4xx JSON that names the field and the problem -----------------------------------
@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (b'{"length": 5.1, "width": ', 400, "malformed JSON"),
        (b'{"length": NaN, "width": 1}', 400, "NaN and Infinity are not valid JSON"),
        (b'{"length": 5.1}', 400, "missing feature 'width'; expected length, width - at `$.width`"),
        (b'{"length": 5.1, "width": 2.4, "colour": 1}', 400, "unknown feature 'colour'; expected length, width"),
        (b'{"length": "5.1", "width": 2.4}', 400, "Expected `number`, got `string` - at `$.length`"),
        (b"[5.1, 2.4, 3.0]", 400, "expected 2 values per row, got 3 - at `$`"),
        (b'{"length": 1e400, "width": 2.4}', 400, "NaN or infinity is not allowed - at `$.length`"),
        (b'{"length": null, "width": 2.4}', 400, "null (a missing value) is not allowed - at `$.length`"),
        (b"[]", 400, "empty batch"),
        (b"", 400, "request body is empty"),
        (b'"hello"', 400, "Expected an object"),
        (b"[" * 50_000 + b"]" * 50_000, 400, "JSON is nested too deeply - at `$`"),
    ],
)
def test_bad_input_is_a_4xx_that_names_the_problem(client: httpx.Client, body: bytes, status: int, error: str) -> None:
    response = client.post("/models/iris/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert error in response.json()["error"]
    assert "Traceback" not in response.text and "/src/" not in response.text


def test_limits_on_text_length_and_tensor_size(client: httpx.Client) -> None:
    long_text = post(client, "/models/reviews/predict", {"text": "あ" * 10_001})
    assert long_text.status_code == 400
    assert long_text.json()["error"] == "string is longer than 10000 characters - at `$.text`"
    huge = {"inputs": [{"name": "input", "datatype": "FP64", "shape": [1 << 20, 1 << 10], "data": [1.0]}]}
    response = post(client, "/v2/models/iris/infer", huge)
    assert response.status_code == 400 and "exceeds the limit of 16777216 elements" in response.json()["error"]


def test_unknown_model_is_404(client: httpx.Client) -> None:
    response = post(client, "/models/nope/predict", {"x": 1})
    assert response.status_code == 404
    assert response.json() == {
        "error": "model 'nope' not found; served models: diabetes, iris, reviews, score",
        "code": "model_not_found",
        "request_id": response.headers["x-request-id"],
    }


def test_unknown_route_and_method_are_json(client: httpx.Client) -> None:
    missing = client.get("/no/such/route")
    assert missing.status_code == 404 and missing.json()["error"] == "no route GET /no/such/route"
    wrong_method = client.get("/models/iris/predict")
    assert wrong_method.status_code == 405 and wrong_method.json()["code"] == "http_405"


def test_payload_limit_is_413(inprocess: Any, example_repo: Path) -> None:
    server = inprocess(example_repo, "--max-body-bytes", "1000")
    response = server.client.post("/models/iris/predict", json={"instances": [[5.1, 2.4]] * 200})
    assert response.status_code == 413
    size = len(response.request.content)
    assert response.json()["error"] == f"request body of {size} bytes exceeds the limit of 1000 bytes"


def test_broken_model_is_failed_and_others_keep_serving(inprocess: Any, example_repo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(example_repo / "iris", repo / "iris")
    shutil.copytree(example_repo / "diabetes", repo / "diabetes")
    (repo / "diabetes" / "1" / "model.skops").write_bytes(b"corrupt")
    server: InProcessServer = inprocess(repo, wait_ready=False)
    server.wait(ready=False)
    client = server.client
    import time

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        ready = client.get("/ready")
        states = {m["name"]: m["state"] for m in ready.json()["models"]}
        if "LOADING" not in states.values():
            break
        time.sleep(0.05)
    assert ready.status_code == 503
    assert states == {"iris": "READY", "diabetes": "FAILED"}
    failed = next(m for m in ready.json()["models"] if m["name"] == "diabetes")
    assert "artifact 'model.skops' has changed" in failed["error"]
    assert client.post("/predict", json={"length": 5.1, "width": 2.4}).json() == {"prediction": "virginica"}
    not_ready = client.post("/models/diabetes/predict", json={"bmi": 0.05})
    assert not_ready.status_code == 503 and not_ready.json()["error"] == "model 'diabetes' version '1' is FAILED"
    assert "diabetes:1 FAILED to load" in server.output()


def test_declared_output_range_clips_every_caller_of_a_batch(inprocess: Any, tmp_path: Path) -> None:
    """``output: {min, max}`` clips each prediction, also when concurrent requests share one model call."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    from sklearn.linear_model import LinearRegression

    import ferry

    x = np.arange(10.0).reshape(-1, 1)
    model = LinearRegression().fit(x, x.ravel())  # predicts its input
    ferry.build(
        model,
        "echo",
        tmp_path / "repo",
        output_schema={"kind": "number", "min": 0.0, "max": 5.0},
        sample_input=[[1.0]],
    )
    client = inprocess(tmp_path / "repo").client
    inputs = [-7.5, 2.5, 40.0, 4.0] * 25

    def ask(value: float) -> Any:
        return client.post("/models/echo/predict", json=[[value], [value + 1.0]]).json()["predictions"]

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, inputs))
    for value, answer in zip(inputs, answers, strict=True):
        assert answer == pytest.approx([min(max(value, 0.0), 5.0), min(max(value + 1.0, 0.0), 5.0)])
