"""Explanations of models Ferry's compiled evaluator does not take (issue 23, categorical splits).

A LightGBM model fitted on pandas categoricals keeps the LightGBM runtime; it explains with LightGBM's own
path-dependent TreeSHAP (``pred_contrib``), the categories sent as text, equal to the library's answer on
the same DataFrame. A LightGBM model with linear trees has no TreeSHAP: the 501 says so.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import lightgbm
import numpy as np
import pytest
from tests.test_tabular import lightgbm_categorical, passengers

import ferry
from conftest import ServerProcess

pd = pytest.importorskip("pandas")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    repo = tmp_path_factory.mktemp("categorical")
    classifier, frame = lightgbm_categorical()
    ferry.build(classifier, "ports", repo)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 2))
    linear = lightgbm.train(
        {"objective": "regression", "linear_tree": True, "verbose": -1},
        lightgbm.Dataset(x, x[:, 0] * 2 + x[:, 1]),
        num_boost_round=5,
    )
    linear.save_model(str(repo / "linear.txt"))
    ferry.build(repo / "linear.txt", "linear", repo)
    server = ServerProcess([str(repo)])
    yield {"server": server, "classifier": classifier, "frame": frame}
    server.stop()


def _rows() -> Any:
    return passengers(10, 11).drop(columns=["sex"]).assign(embarked=lambda f: f.embarked.astype("category"))


def test_lightgbm_categorical_splits_explain_as_lightgbm_pred_contrib(served: dict[str, Any]) -> None:
    url, classifier = served["server"].url, served["classifier"]
    frame = _rows()
    assert any(tree["num_cat"] for tree in classifier.booster_.dump_model()["tree_info"])  # categorical splits
    records = json.loads(frame.astype({"embarked": str}).to_json(orient="records"))
    response = httpx.post(f"{url}/models/ports/explain", json=records, timeout=20)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["method"] == "tree_shap" and body["link"] == "softmax"
    reference = np.asarray(classifier.booster_.predict(frame, pred_contrib=True)).reshape(10, 3, 4)
    raw = classifier.booster_.predict(frame, raw_score=True)
    labels = ["0", "1", "2"]
    for row, contributions in enumerate(body["contributions"]):
        for k, label in enumerate(labels):
            got = [contributions[label][name] for name in ("pclass", "age", "embarked")]
            np.testing.assert_allclose(got, reference[row, k, :3], rtol=1e-12, atol=1e-12)
            assert sum(got) + body["expected_value"][label] == pytest.approx(raw[row, k], rel=1e-9, abs=1e-12)
            assert body["raw_scores"][row][label] == pytest.approx(raw[row, k], rel=1e-12, abs=1e-12)
    assert body["predictions"] == classifier.predict(frame).tolist()
    metadata = httpx.get(f"{url}/models/ports/metadata").json()
    assert metadata["explanation"] == {"method": "tree_shap", "link": "softmax"}


def test_lightgbm_linear_trees_answer_501_naming_the_models_that_explain(served: dict[str, Any]) -> None:
    response = httpx.post(f"{served['server'].url}/models/linear/explain", json=[[0.1, 0.2]])
    assert response.status_code == 501, response.text
    body = response.json()
    assert "model 'linear' cannot be explained: LightGBM linear trees have no TreeSHAP" in body["error"]
    assert body["explainable_models"] == ["ports"]
