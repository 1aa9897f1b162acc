"""The manual's "Bring your own model" blocks (tests/manual.py), run as written in a folder holding the user's files."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import joblib
import pytest
import yaml
from tests.conftest import ServerProcess
from tests.manual import manual_text
from tests.test_byom import _models, write_mlserver_repository, write_reviews_files, write_talk_files


def blocks() -> dict[str, str]:
    """``<!-- byom:NAME -->`` followed by a bash block: NAME -> the block's text."""
    text = manual_text()
    return dict(re.findall(r"<!-- byom:(\w+) -->\n```bash\n(.*?)```", text, flags=re.S))


def run_block(name: str, folder: Path) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-e", "-c", blocks()[name]], cwd=folder, capture_output=True, text=True, env=env)
    assert done.returncode == 0, f"README block byom:{name} failed:\n{done.stderr}"


def test_every_story_has_a_block() -> None:
    assert set(blocks()) == {
        "iris",
        "diabetes",
        "seldon",
        "reviews",
        "mlflow",
        "mlserver",
        "titanic",
        "mlflow_titanic",
        "boosters",
    }


def test_two_pickles_and_the_old_routes(tmp_path: Path, serve: Callable[..., ServerProcess]) -> None:
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import LinearRegression

    write_talk_files(tmp_path)
    data = load_diabetes()
    diabetes = LinearRegression().fit(data.data[:, [2]], data.target)
    joblib.dump(diabetes, tmp_path / "diabetes.joblib")
    (tmp_path / "MLScore.py").write_text("class MLScore:\n    def predict(self, X, feature_names):\n        return X\n")
    for name in ("iris", "diabetes", "seldon"):
        run_block(name, tmp_path)
    server = serve(str(tmp_path / "models"), "--grpc-port", "0")
    assert httpx.post(server.url + "/predict", json={"length": 5.1, "width": 2.4}).json() == {"prediction": "virginica"}
    assert httpx.get(server.url + "/isAlive").json() is True
    answer = httpx.get(server.url + "/prediction/", params={"f": "0.05"}).json()
    assert answer == pytest.approx(199.6, abs=0.1) and answer == pytest.approx(diabetes.predict([[0.05]])[0])
    assert httpx.post(server.url + "/score", json={"X": [1, 2]}).json() == {"score": [1, 2]}


def test_a_class_with_its_featurizer(tmp_path: Path, serve: Callable[..., ServerProcess]) -> None:
    """The README's class and build, as printed: its files are bundled, hashed and checked at every load."""
    write_reviews_files(tmp_path)
    readme_class = re.search(
        r"where `reviews.py` is the user's own class:\n\n<!-- .*? -->\n```python\n(.*?)```", manual_text(), re.S
    )
    assert readme_class is not None
    (tmp_path / "reviews.py").write_text(readme_class.group(1))  # the README's class, as printed
    run_block("reviews", tmp_path)
    bundle = tmp_path / "models" / "reviews" / "1"
    manifest = yaml.safe_load((bundle / "ferry.yaml").read_text())
    assert {"reviews.py", "featurizer.py", "vectorizer.pkl", "stars.txt", "requirements.txt"} <= set(
        manifest["artifacts"]
    )
    assert manifest["options"]["requirements"] == "requirements.txt"
    server = serve(str(tmp_path / "models"), "--grpc-port", "0")
    good = httpx.post(server.url + "/models/reviews/predict", json={"text": "A wonderful film, I loved it"}).json()
    bad = httpx.post(server.url + "/models/reviews/predict", json={"text": "Awful, boring and terrible"}).json()
    assert good["prediction"] > bad["prediction"] + 1.0, (good, bad)
    assert not list(bundle.rglob("__pycache__")), "loading wrote bytecode into a hashed bundle"
    server.stop()

    # A featurizer.py changed after the build is refused, naming the file.
    (bundle / "featurizer.py").write_text("def clean(text):\n    return 'tampered'\n")
    server = serve(str(tmp_path / "models"), "--grpc-port", "0", wait_ready=False)
    version = _models(server)["reviews"]
    assert version["state"] == "FAILED" and "featurizer.py" in version["error"], version


def test_the_first_python_example_builds(tmp_path: Path) -> None:
    """``labels=list(iris.target_names)`` holds numpy.str_ values: the build must take them as labels."""
    found = re.search(r"From Python:\n\n<!-- .*? -->\n```python\n(.*?)```", manual_text(), re.S)
    assert found is not None
    done = subprocess.run([sys.executable, "-c", found.group(1)], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    manifest = (tmp_path / "models" / "flowers" / "1" / "ferry.yaml").read_text()
    assert "- setosa" in manifest


@pytest.mark.timeout(600)  # importing mlflow is slow on a busy box
def test_an_mlflow_folder(tmp_path: Path, serve: Callable[..., ServerProcess]) -> None:
    import warnings

    mlflow_sklearn = pytest.importorskip("mlflow.sklearn", reason="mlflow is a test extra (pip install mlflow-skinny)")
    from mlflow.models import infer_signature
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    iris = load_iris(as_frame=True)
    x = iris.data.rename(columns=lambda c: c.replace(" (cm)", "").replace(" ", "_"))
    classifier = LogisticRegression(max_iter=500).fit(x, iris.target)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # mlflow warns about the (default) cloudpickle format
        # Requirements given: else mlflow infers them in a child process, for files `ferry build` never reads.
        signature = infer_signature(x, iris.target)
        mlflow_sklearn.save_model(
            classifier, str(tmp_path / "model"), signature=signature, pip_requirements=["scikit-learn"]
        )
    run_block("mlflow", tmp_path)
    server = serve(str(tmp_path / "models"), "--grpc-port", "0")
    setosa = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
    assert httpx.post(server.url + "/models/flowers/predict", json=setosa).json()["prediction"] == "setosa"
    # the README's MLflow client call, against this server
    found = re.search(r"```bash\n(curl -s -X POST localhost:8000/invocations.*?)\n# (.*?)\n```", manual_text(), re.S)
    assert found is not None
    command = found.group(1).replace("localhost:8000", server.url)
    done = subprocess.run(["bash", "-e", "-c", command], capture_output=True, text=True)
    assert json.loads(done.stdout) == json.loads(found.group(2)), done.stdout + done.stderr


def test_an_mlserver_repository(tmp_path: Path) -> None:
    write_mlserver_repository(tmp_path / "mlserver-models")
    run_block("mlserver", tmp_path)
    assert (tmp_path / "models" / "iris" / "v0.1.0" / "ferry.yaml").is_file()
    assert (tmp_path / "models" / "petals" / "2" / "ferry.yaml").is_file()


@pytest.mark.timeout(600)
def test_a_mixed_type_pipeline_and_its_mlflow_twin(tmp_path: Path, serve: Callable[..., ServerProcess]) -> None:
    """The titanic pipeline (joblib) and the same pipeline saved by mlflow with string columns, built as printed."""
    import warnings

    import mlflow.sklearn
    from mlflow.models import infer_signature
    from tests.test_tabular import passengers, titanic_pipeline

    pipeline = titanic_pipeline()
    (tmp_path / "joblib").mkdir()
    joblib.dump(pipeline, tmp_path / "joblib" / "titanic.joblib")
    run_block("titanic", tmp_path / "joblib")
    frame = passengers(30, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        signature = infer_signature(frame, pipeline.predict(frame))
        mlflow.sklearn.save_model(
            pipeline,
            str(tmp_path / "mlflow" / "model"),
            serialization_format="pickle",
            signature=signature,
            pip_requirements=["scikit-learn"],
        )
    run_block("mlflow_titanic", tmp_path / "mlflow")
    record = {"sex": "female", "pclass": 1, "age": 29.0, "embarked": "S"}
    expected = pipeline.predict(pd_frame([record])).tolist()
    server = serve(str(tmp_path / "joblib" / "models"))
    answer = httpx.post(server.url + "/models/titanic/predict", json=record).json()
    assert answer["prediction"] == expected[0] and type(answer["prediction"]) is int
    server = serve(str(tmp_path / "mlflow" / "models"))
    split = {"dataframe_split": {"columns": list(record), "data": [list(record.values())]}}
    assert httpx.post(server.url + "/invocations", json=split).json() == {"predictions": expected}


def pd_frame(records: list[dict[str, object]]) -> object:
    import pandas as pd

    return pd.DataFrame(records)


def test_xgboost_and_catboost_files(tmp_path: Path, serve: Callable[..., ServerProcess]) -> None:
    """Files saved by the libraries themselves: built without a flag, served equal to their own predict."""
    import numpy as np
    import pandas as pd

    xgboost = pytest.importorskip("xgboost")
    catboost = pytest.importorskip("catboost")
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(300, 3)), columns=["tenure", "charges", "calls"])
    churn = xgboost.XGBClassifier(n_estimators=20, max_depth=3).fit(frame, (frame.tenure + frame.calls > 0).astype(int))
    churn.save_model(tmp_path / "churn.json")
    spend = catboost.CatBoostRegressor(iterations=30, depth=4, verbose=0).fit(frame, frame.charges * 2 + frame.calls)
    spend.save_model(str(tmp_path / "spend.cbm"))
    run_block("boosters", tmp_path)
    server = serve(str(tmp_path / "models"), "--grpc-port", "0")
    rows = frame.iloc[:20]
    records = rows.to_dict(orient="records")
    answer = httpx.post(server.url + "/models/churn/predict", json=records).json()
    assert answer["predictions"] == churn.predict(rows).tolist()  # integers, as XGBoost answers them
    assert all(type(value) is int for value in answer["predictions"])
    expected = churn.predict_proba(rows)
    got = np.array([[row[str(c)] for c in churn.classes_] for row in answer["probabilities"]])
    np.testing.assert_array_equal(got, expected.astype(np.float64))
    answer = httpx.post(server.url + "/models/spend/predict", json=records).json()
    assert answer["predictions"] == spend.predict(rows).tolist()
