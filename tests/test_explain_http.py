"""Explanations over HTTP against a real ``ferry serve``: the native ``/explain`` route, KServe v1's
``:explain``, the 501 of a model without an exact explanation, the model metadata and the OpenAPI document, and
concurrent explain requests batched into shared explanation calls, each answered as it would be alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import lightgbm
import numpy as np
import pytest

import ferry
from conftest import ServerProcess
from ferry.examples import build_examples

FEATURES = ["a", "b", "c"]
_rng = np.random.default_rng(4)
_X = _rng.normal(size=(300, 3))
_X[_rng.random(_X.shape) < 0.1] = np.nan
_Y = np.digitize(np.nan_to_num(_X[:, 0]) + np.nan_to_num(_X[:, 1]), [-0.5, 0.5])
LABELS = ["low", "mid", "high"]


@pytest.fixture(scope="module")
def booster() -> Any:
    return lightgbm.LGBMClassifier(n_estimators=15, num_leaves=7, verbose=-1).fit(_X, _Y)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, booster: Any) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("explain")
    build_examples(repo, ["iris", "score", "reviews"])
    features = [{"name": name, "allow_nan": True} for name in FEATURES]
    ferry.build(booster, "grades", repo, input_schema={"kind": "features", "features": features}, labels=LABELS)
    process = ServerProcess([str(repo)])
    yield process
    process.stop()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=20.0) as http:
        yield http


def _lightgbm_contributions(booster: Any, rows: np.ndarray) -> np.ndarray:
    return np.asarray(booster.booster_.predict(rows, pred_contrib=True)).reshape(len(rows), 3, len(FEATURES) + 1)


def test_native_explain_takes_what_predict_takes_and_equals_lightgbm(client: httpx.Client, booster: Any) -> None:
    rows = np.asarray([[0.3, -1.2, 2.0], [np.nan, 0.5, 0.0]])
    records = [{"a": 0.3, "b": -1.2, "c": 2.0}, {"a": None, "b": 0.5, "c": 0.0}]
    response = client.post("/models/grades/explain", json=records)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["method"] == "tree_shap" and body["link"] == "softmax"
    assert body["predictions"] == client.post("/models/grades/predict", json=records).json()["predictions"]
    reference = _lightgbm_contributions(booster, rows)
    for row, contributions in enumerate(body["contributions"]):
        assert list(contributions) == LABELS
        for k, label in enumerate(LABELS):
            got = [contributions[label][name] for name in FEATURES]
            np.testing.assert_allclose(got, reference[row, k, :3], rtol=1e-9, atol=1e-12)
            total = sum(got) + body["expected_value"][label]
            assert total == pytest.approx(body["raw_scores"][row][label], rel=1e-9, abs=1e-12)
    np.testing.assert_allclose([body["expected_value"][label] for label in LABELS], reference[0, :, 3], rtol=1e-9)
    one = client.post("/models/grades/versions/1/explain", json=records[0]).json()  # one record: a list of one
    assert one["contributions"] == body["contributions"][:1]


def test_kserve_v1_explain_answers_predictions_and_explanations(client: httpx.Client, booster: Any) -> None:
    instances = [[0.3, -1.2, 2.0], [1.0, 1.0, 1.0]]
    response = client.post("/v1/models/grades:explain", json={"instances": instances})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"predictions", "explanations"}
    assert (
        body["predictions"]
        == client.post("/v1/models/grades:predict", json={"instances": instances}).json()["predictions"]
    )
    assert len(body["explanations"]) == 2
    reference = _lightgbm_contributions(booster, np.asarray(instances))
    for row, explanation in enumerate(body["explanations"]):
        assert explanation["method"] == "tree_shap" and explanation["link"] == "softmax"
        got = [[explanation["contributions"][label][name] for name in FEATURES] for label in LABELS]
        np.testing.assert_allclose(got, reference[row, :, :3], rtol=1e-9, atol=1e-12)


def test_linear_and_text_models_explain_and_add_up(client: httpx.Client) -> None:
    iris = client.post("/models/iris/explain", json={"length": 5.1, "width": 2.4}).json()
    assert iris["method"] == "linear" and iris["predictions"] == ["virginica"]
    for label, contributions in iris["contributions"][0].items():
        total = sum(contributions.values()) + iris["expected_value"][label]
        assert total == pytest.approx(iris["raw_scores"][0][label], rel=1e-9)
    reviews = client.post("/models/reviews/explain", json={"text": "最高の映画でした"}).json()
    contributions = reviews["contributions"][0]
    assert "最高" in contributions and "(n-grams absent from the text)" in contributions
    assert sum(contributions.values()) + reviews["expected_value"] == pytest.approx(reviews["raw_scores"][0], rel=1e-9)


def test_a_model_without_an_exact_explanation_answers_501_naming_those_that_have_one(client: httpx.Client) -> None:
    for path in ("/models/score/explain", "/v1/models/score:explain"):
        response = client.post(path, json={"instances": [[1.0, 2.0]]})
        assert response.status_code == 501, response.text
        body = response.json()
        assert body["code"] == "not_implemented"
        assert "model 'score' cannot be explained: the python runtime has no exact explanation" in body["error"]
        assert body["explainable_models"] == ["grades", "iris", "reviews"]
    assert client.post("/v1/models/nope:explain", json={"instances": [[1]]}).status_code == 404
    assert client.post("/models/nope/explain", json={}).status_code == 404
    assert client.get("/models/grades/explain").status_code == 405
    bad = client.post("/models/grades/explain", json={"a": "x", "b": 1, "c": 2})
    assert bad.status_code == 400 and "$.a" in bad.json()["error"]  # the same input checks as predict


def test_metadata_and_openapi_say_how_each_model_explains(client: httpx.Client) -> None:
    def metadata(name: str) -> dict[str, Any]:
        found: dict[str, Any] = client.get(f"/models/{name}/metadata").json()
        return found

    assert metadata("grades")["explanation"] == {"method": "tree_shap", "link": "softmax"}
    assert metadata("iris")["explanation"] == {"method": "linear", "link": "identity"}
    assert "unavailable" in metadata("score")["explanation"]
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/models/grades/explain", "/models/grades/versions/1/explain", "/v1/models/grades:explain"):
        assert "501" in paths[path]["post"]["responses"], path
    metrics = client.get("/metrics").text
    assert 'route="model/explain"' in metrics and 'route="v1:explain"' in metrics


def test_explain_requests_are_counted_under_their_own_route(server: ServerProcess, tmp_path: Path) -> None:
    with httpx.Client(base_url=server.url) as http:
        http.post("/models/iris/explain", json={"length": 1.0, "width": 0.2})
        lines = [line for line in http.get("/metrics").text.splitlines() if "ferry_requests_total{" in line]
    assert any('model="iris"' in line and 'route="model/explain"' in line and 'status="200"' in line for line in lines)


def test_readme_explain_block(client: httpx.Client) -> None:
    """README's Explanations block: each curl answers what it shows (a subset of keys, numbers to the digits shown)."""
    import json
    import re
    import shlex

    from tests.manual import manual_text

    text = manual_text()
    marker = "<!-- tested: tests/test_explain_http.py::test_readme_explain_block -->\n```console\n"
    block = text[text.index(marker) + len(marker) :].split("```", 1)[0]
    lines = block.strip().splitlines()
    assert len(lines) == 4
    for command, shown in zip(lines[::2], lines[1::2], strict=True):
        argv = shlex.split(command.removeprefix("$ "))
        path = re.sub(r"^localhost:8000", "", argv[1])
        got = client.post(path, content=argv[argv.index("-d") + 1].encode()).json()
        _assert_shown(json.loads(shown), got, "$")


def _assert_shown(shown: Any, got: Any, where: str) -> None:
    if isinstance(shown, dict):
        assert isinstance(got, dict), where
        for key, value in shown.items():
            assert key in got, f"{where}.{key} missing from {list(got)}"
            _assert_shown(value, got[key], f"{where}.{key}")
    elif isinstance(shown, list):
        assert isinstance(got, list) and len(got) == len(shown), where
        for index, (a, b) in enumerate(zip(shown, got, strict=True)):
            _assert_shown(a, b, f"{where}[{index}]")
    elif isinstance(shown, float):
        assert got == pytest.approx(shown, abs=5e-4), f"{where}: README {shown}, server {got}"
    else:
        assert got == shown, where


def _explain_calls(client: httpx.Client, model: str) -> tuple[float, float]:
    """(explanation calls, rows explained) of a model so far: ``ferry_explain_batch_size_rows``' count and sum."""
    found = {"count": 0.0, "sum": 0.0}
    for line in client.get("/metrics").text.splitlines():
        for kind in found:
            if line.startswith(f'ferry_explain_batch_size_rows_{kind}{{model="{model}"'):
                found[kind] += float(line.rsplit(" ", 1)[1])
    return found["count"], found["sum"]


def _v2_explain(rows: list[list[float]]) -> dict[str, Any]:
    columns = np.asarray(rows).T
    inputs = [
        {"name": name, "datatype": "FP64", "shape": [len(rows)], "data": columns[j].tolist()}
        for j, name in enumerate(FEATURES)
    ]
    return {"inputs": inputs, "parameters": {"explain": True}}


def test_concurrent_explanations_share_calls_and_each_answer_is_its_own_alone(client: httpx.Client) -> None:
    """Many explain requests at once (native, KServe v1 and v2 ``parameters.explain``, of 1 to 3 rows each) are
    batched: fewer explanation calls than requests, every row explained once; each answer equals, value for
    value, the one the same request gets alone, so it still adds up per request."""
    import asyncio

    rng = np.random.default_rng(11)
    texts = ["最高の映画でした", "dull and far too long", "a quiet, lovely film", "I want my money back"]
    requests: list[tuple[str, Any]] = []
    for i in range(60):
        rows = np.round(rng.normal(size=(1 + i % 3, 3)), 3).tolist()
        requests += [
            ("/models/grades/explain", [dict(zip(FEATURES, row, strict=True)) for row in rows]),
            ("/v1/models/grades:explain", {"instances": rows}),
            ("/v2/models/grades/infer", _v2_explain(rows)),
            ("/models/reviews/explain", {"text": texts[i % len(texts)]}),
        ]
    alone = []
    for path, body in requests:
        response = client.post(path, json=body)
        assert response.status_code == 200, response.text
        alone.append(response.json())
    grades_calls, grades_rows = _explain_calls(client, "grades")
    reviews_calls, reviews_rows = _explain_calls(client, "reviews")

    async def all_at_once() -> list[Any]:
        async with httpx.AsyncClient(base_url=str(client.base_url), timeout=60.0) as http:
            replies = await asyncio.gather(*(http.post(path, json=body) for path, body in requests))
        assert all(r.status_code == 200 for r in replies), [r.text for r in replies if r.status_code != 200][:1]
        return [r.json() for r in replies]

    together = asyncio.run(all_at_once())
    for (path, _), one, batched in zip(requests, alone, together, strict=True):
        assert batched == one, path
    calls, rows = _explain_calls(client, "grades")
    assert rows - grades_rows == 3 * sum(1 + i % 3 for i in range(60))  # every row explained once
    assert calls - grades_calls < 3 * 60  # fewer calls than requests: batched
    calls, rows = _explain_calls(client, "reviews")
    assert rows - reviews_rows == 60 and calls - reviews_calls < 60
