"""Explanations per input column of a pandas Pipeline (issue 23): a ColumnTransformer's one-hot and scaled
columns traced back to the columns the user sends (``ferry.runtimes.columns_explain``).

Linear: each input column's ``Σ coef_j · (x_j - training mean_j)`` over its encoded columns, computed here
from scikit-learn's own transform of the training frame, through a real server. Trees: the Shapley values
of the path-dependent game whose players are the input columns, by brute force over every subset.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from tests.test_explain import _brute_force
from tests.test_tabular import COLUMNS, passengers, titanic_pipeline

import ferry
from conftest import ServerProcess
from ferry.runtimes.load import load_bundle
from ferry.runtimes.trees import from_sklearn

pd = pytest.importorskip("pandas")


def _records(frame: Any) -> list[dict[str, Any]]:
    return json.loads(frame.to_json(orient="records"))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    repo = tmp_path_factory.mktemp("columns")
    pipeline = titanic_pipeline()
    train = passengers(400, 0)  # the frame titanic_pipeline was fitted on
    ferry.build(pipeline, "titanic", repo, training_data=train)
    ferry.build(pipeline, "untrained", repo)  # no training data: the one-hot columns' means are unknown
    server = ServerProcess([str(repo)])
    yield {"server": server, "pipeline": pipeline, "train": train}
    server.stop()


def test_a_linear_pipeline_explains_each_column_the_user_sends(served: dict[str, Any]) -> None:
    url, pipeline, train = served["server"].url, served["pipeline"], served["train"]
    frame = passengers(6, 5)
    response = httpx.post(f"{url}/models/titanic/explain", json=_records(frame), timeout=20)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["method"] == "linear" and body["link"] == "logit" and body["positive_class"] == 1
    encoder, model = pipeline[:-1], pipeline[-1]
    mean = encoder.transform(train).mean(axis=0)
    terms = (encoder.transform(frame) - mean) * model.coef_[0]  # [rows, encoded columns]
    names = list(encoder.get_feature_names_out())  # text__sex_female, numbers__age, ...
    for row, contributions in enumerate(body["contributions"]):
        assert list(contributions) == COLUMNS  # the columns sent, not the encoded ones
        for column in COLUMNS:
            expected = sum(terms[row, j] for j, name in enumerate(names) if name.split("__")[1].startswith(column))
            assert contributions[column] == pytest.approx(expected, rel=1e-9, abs=1e-12)
        total = sum(contributions.values()) + body["expected_value"]
        assert total == pytest.approx(pipeline.decision_function(frame)[row], rel=1e-9)
        assert body["raw_scores"][row] == pytest.approx(pipeline.decision_function(frame)[row], rel=1e-12)
    assert body["predictions"] == pipeline.predict(frame).tolist()


def test_without_training_data_a_one_hot_linear_pipeline_says_what_it_needs(served: dict[str, Any]) -> None:
    response = httpx.post(f"{served['server'].url}/models/untrained/explain", json=_records(passengers(1, 5)))
    assert response.status_code == 501, response.text
    error = response.json()["error"]
    assert "training mean of every encoded column, unknown for ['embarked', 'sex']" in error
    assert "--training-data FILE.csv" in error and "training_data=frame" in error


@pytest.mark.parametrize("form", ["csv", "parquet"])
def test_the_cli_takes_training_rows_from_a_file_as_the_python_api_does(
    served: dict[str, Any], tmp_path: Path, form: str
) -> None:
    """``ferry build titanic.joblib --training-data train.csv``: the same explanation as ``ferry.build(...,
    training_data=frame)`` gives (a CLI user had no way to it, and the 501 pointed at Python)."""
    import joblib
    from tests.test_byom import ferry as ferry_cli

    if form == "parquet":
        pytest.importorskip("pyarrow", reason="pandas reads Parquet with pyarrow, which the test extras leave out")
    pipeline, train = served["pipeline"], served["train"]
    joblib.dump(pipeline, tmp_path / "titanic.joblib")
    rows = tmp_path / f"train.{form}"
    train.to_csv(rows, index=False) if form == "csv" else train.to_parquet(rows)
    built = ferry_cli("build", str(tmp_path / "titanic.joblib"), "--name", "cli", "--repo", str(tmp_path / "m"),
                      "--trusted", "--training-data", str(rows.rename(tmp_path / "rows.data")))  # fmt: skip
    assert built.returncode == 0, built.stderr
    frame = passengers(3, 6)
    server = ServerProcess([str(tmp_path / "m")], env={"FERRY_TRUST_PICKLE": "1"})
    try:
        got = httpx.post(f"{server.url}/models/cli/explain", json=_records(frame), timeout=20)
    finally:
        server.stop()
    want = httpx.post(f"{served['server'].url}/models/titanic/explain", json=_records(frame), timeout=20)
    assert got.status_code == 200, got.text
    assert got.json()["contributions"] == pytest.approx(want.json()["contributions"], rel=1e-9)


def _tree_pipeline(model: Any) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    frame = passengers(300, 2)
    label = ((frame.sex == "female") & (frame.embarked != "S")) | (frame.age < 22) | (frame.pclass == 1)
    columns = ColumnTransformer(
        [
            ("text", OneHotEncoder(handle_unknown="ignore"), ["sex", "embarked"]),
            ("numbers", "passthrough", ["age", "pclass"]),
        ]
    )
    return Pipeline([("columns", columns), ("model", model)]).fit(frame, label.astype(int))


@pytest.mark.parametrize("kind", ["forest", "boosting"])
def test_a_tree_pipeline_explains_each_column_as_one_player(tmp_path: Path, kind: str) -> None:
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier

    model = (
        RandomForestClassifier(10, max_depth=4, random_state=0)
        if kind == "forest"
        else GradientBoostingClassifier(n_estimators=15, max_depth=3, random_state=0)
    )
    pipeline = _tree_pipeline(model)
    ferry.build(pipeline, "trees", tmp_path, sample_input=_records(passengers(1, 0))[0])
    runtime: Any = load_bundle(tmp_path / "trees" / "1").runtime
    assert runtime.explanation() == {"method": "tree_shap", "link": "identity" if kind == "forest" else "logit"}
    frame = passengers(5, 8)
    found = runtime.explain(np.asarray(frame[COLUMNS], dtype=object))
    assert found.features == COLUMNS
    encoded = pipeline[:-1].transform(frame)
    ensemble = from_sklearn(pipeline[-1])
    players = np.asarray([COLUMNS.index(n.split("__")[1].split("_")[0]) for n in pipeline[:-1].get_feature_names_out()])
    for row in range(5):
        brute = _brute_force(ensemble, encoded[row], players)
        np.testing.assert_allclose(found.contributions[row], brute, rtol=1e-9, atol=1e-12)
    total = found.contributions.sum(axis=2) + found.expected_value
    np.testing.assert_allclose(total, found.score, rtol=1e-9, atol=1e-12)
    if kind == "boosting":
        np.testing.assert_allclose(found.score[:, 0], pipeline.decision_function(frame), rtol=1e-12)
    else:
        np.testing.assert_allclose(found.score, pipeline.predict_proba(frame), rtol=1e-12)
