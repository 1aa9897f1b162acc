"""Bring your own model, from the CLI only, with files made the way users make them.

The iris talk's two joblib pickles, a build-time expectation, and the CLI's loud refusals. The README's own
blocks (tests/test_readme_byom.py) build and serve the diabetes and /score client APIs declared with --route,
build and serve the class with its featurizer, vectorizer and LightGBM file, and convert an MLServer repository
with ``ferry build``; this file does not build those again.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import joblib
import pytest
import yaml
from tests.conftest import ServerProcess, free_port
from tests.inprocess import InProcessServer, inprocess_fixture  # noqa: F401 (the fixture)

IRIS_LABELS = "setosa,versicolor,virginica"


def ferry(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ferry", *args], capture_output=True, text=True, timeout=180, cwd=cwd)


def one_line_error(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    """The CLI's error policy: exit ``code``, one line on stderr starting ``error:``, no traceback."""
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def talk_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_talk_files(tmp_path_factory.mktemp("talk"))


def write_talk_files(folder: Path) -> Path:
    """The talk's files: a StandardScaler and a Perceptron on petal length/width, dumped separately with joblib."""
    from sklearn.datasets import load_iris
    from sklearn.linear_model import Perceptron
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    iris = load_iris()
    x, y = iris.data[:, [2, 3]], iris.target
    x_train, _, y_train, _ = train_test_split(x, y, test_size=0.3, random_state=0)
    sc = StandardScaler().fit(x_train)
    ppn = Perceptron(max_iter=40, eta0=0.1, random_state=0).fit(sc.transform(x_train), y_train)
    joblib.dump(sc, folder / "sc_iris_petal.pkl")
    joblib.dump(ppn, folder / "ppn_iris.pkl")
    joblib.dump({"eta0": 0.1, "max_iter": 40}, folder / "params.pkl")
    return folder


def build_iris(files: Path, repo: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return ferry(
        "build",
        str(files / "sc_iris_petal.pkl"),
        str(files / "ppn_iris.pkl"),
        "--name",
        "iris",
        "--repo",
        str(repo),
        "--trusted",
        "--features",
        "length,width",
        "--labels",
        IRIS_LABELS,
        *extra,
    )


@pytest.fixture(scope="module")
def iris_repo(talk_files: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The talk's two pickles built once, as the README builds them: the talk's route, a sample and its expectation."""
    repo = tmp_path_factory.mktemp("iris") / "models"
    sample = ("--sample", '{"length":1.4,"width":0.2}', "--expect", "setosa")
    built = build_iris(talk_files, repo, "--route", "POST /predict", *sample)
    assert built.returncode == 0, built.stderr
    return repo


@pytest.fixture(scope="module")
def iris_server(iris_repo: Path) -> Iterator[ServerProcess]:
    server = ServerProcess([str(iris_repo)])
    yield server
    server.stop()


def test_two_pickles_compose_into_one_pipeline_served_on_the_talks_route(
    iris_repo: Path, iris_server: ServerProcess
) -> None:
    virginica = httpx.post(iris_server.url + "/predict", json={"length": 5.1, "width": 2.4})
    assert virginica.json() == {"prediction": "virginica"}
    setosa = httpx.post(iris_server.url + "/predict", json={"length": 1.4, "width": 0.2})
    assert setosa.json() == {"prediction": "setosa"}
    # the files are kept as the user saved them, each hashed
    manifest = yaml.safe_load((iris_repo / "iris" / "1" / "ferry.yaml").read_text())
    assert {"step-1.pkl", "step-2.pkl"} <= set(manifest["artifacts"])
    assert manifest["options"]["sources"] == ["sc_iris_petal.pkl", "ppn_iris.pkl"]


def test_expectation_fails_a_build_that_lost_its_scaler(talk_files: Path, tmp_path: Path) -> None:
    """The Perceptron alone answers versicolor for a setosa flower: the build says so, and writes nothing."""
    result = ferry(
        "build",
        str(talk_files / "ppn_iris.pkl"),
        "--name",
        "iris",
        "--repo",
        str(tmp_path),
        "--trusted",
        "--features",
        "length,width",
        "--labels",
        IRIS_LABELS,
        "--sample",
        '{"length":1.4,"width":0.2}',
        "--expect",
        "setosa",
    )
    line = one_line_error(result)
    assert "expected setosa, got versicolor" in line
    assert not (tmp_path / "iris").exists()


def test_expectation_is_kept_and_checked_at_warm_up_and_by_ferry_check(
    iris_repo: Path, iris_server: ServerProcess, tmp_path: Path, serve: Callable[..., ServerProcess]
) -> None:
    assert yaml.safe_load((iris_repo / "iris" / "1" / "ferry.yaml").read_text())["expected_output"] == "setosa"
    checked = ferry("check", iris_server.url, "--model", "iris")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "answers the expected" in checked.stdout.replace("\n", " ")

    # A manifest edited to expect another answer: the warm-up refuses the version, naming both values.
    repo = tmp_path / "models"
    shutil.copytree(iris_repo, repo)
    manifest_path = repo / "iris" / "1" / "ferry.yaml"
    manifest = yaml.safe_load(manifest_path.read_text())
    manifest["expected_output"] = "virginica"
    manifest_path.write_text(yaml.safe_dump(manifest))
    server = serve(str(repo), wait_ready=False)
    models = _models(server)
    assert models["iris"]["state"] == "FAILED"
    assert "expected virginica, got setosa" in models["iris"]["error"]


def _models(server: ServerProcess, timeout: float = 60.0) -> dict[str, Any]:
    """Each model's newest version, once every one has finished loading."""
    deadline = time.monotonic() + timeout
    while True:
        listing = httpx.get(server.url + "/models").json()["models"]
        newest = {m["name"]: m["versions"][-1] for m in listing}
        if all(v["state"] != "LOADING" for v in newest.values()) or time.monotonic() > deadline:
            return newest
        time.sleep(0.1)


def test_a_file_that_holds_no_model_is_refused_naming_what_it_holds(talk_files: Path, tmp_path: Path) -> None:
    args = ("--name", "x", "--repo", str(tmp_path), "--trusted")
    line = one_line_error(ferry("build", str(talk_files / "sc_iris_petal.pkl"), str(talk_files / "params.pkl"), *args))
    assert "params.pkl holds a dict (keys: eta0, max_iter), not a model or transformer" in line
    line = one_line_error(ferry("build", str(talk_files / "params.pkl"), *args))
    assert "params.pkl holds a dict" in line
    line = one_line_error(
        ferry("build", str(talk_files / "ppn_iris.pkl"), str(talk_files / "sc_iris_petal.pkl"), *args)
    )
    assert "ppn_iris.pkl holds a Perceptron, which has no transform()" in line
    untrusted = ferry("build", str(talk_files / "sc_iris_petal.pkl"), str(talk_files / "ppn_iris.pkl"), "--name", "x")
    assert "is a pickle, and unpickling runs arbitrary code" in one_line_error(untrusted)


def test_skops_and_pickle_mix_in_one_pipeline(talk_files: Path, tmp_path: Path) -> None:
    import skops.io as sio

    scaler = joblib.load(talk_files / "sc_iris_petal.pkl")
    sio.dump(scaler, tmp_path / "scaler.skops")
    result = ferry(
        "build",
        str(tmp_path / "scaler.skops"),
        str(talk_files / "ppn_iris.pkl"),
        "--name",
        "iris",
        "--repo",
        str(tmp_path / "models"),
        "--trusted",
        "--labels",
        IRIS_LABELS,
        "--sample",
        "[5.1, 2.4]",
        "--expect",
        "virginica",
    )
    assert result.returncode == 0, result.stderr
    manifest = yaml.safe_load((tmp_path / "models" / "iris" / "1" / "ferry.yaml").read_text())
    assert manifest["options"]["steps"] == ["step-1.skops", "step-2.pkl"]


def test_a_bad_route_is_refused_naming_it(tmp_path: Path, talk_files: Path) -> None:
    line = one_line_error(build_iris(talk_files, tmp_path, "--route", "PUT predict"))
    assert "--route 'PUT predict'" in line


@pytest.mark.parametrize("layout", ["missing", "empty", "bundle", "model"])
def test_serve_refuses_a_path_that_is_no_repository(iris_repo: Path, tmp_path: Path, layout: str) -> None:
    repo = iris_repo
    (tmp_path / "empty").mkdir()
    target = {
        "missing": tmp_path / "modles",
        "empty": tmp_path / "empty",
        "bundle": repo / "iris" / "1",
        "model": repo / "iris",
    }[layout]
    line = one_line_error(ferry("serve", str(target), "--grpc-port", "0", "--port", str(free_port())))
    assert str(target) in line
    if layout in ("missing", "empty"):
        assert "REPO/<name>/<version>/ferry.yaml" in line
    else:
        assert f"ferry serve {repo}" in line


def test_usage_errors_exit_2_on_one_line() -> None:
    assert "--name: a model needs a name" in one_line_error(ferry("build", "x.pkl"), code=2)
    assert "No such option: --bogus" in one_line_error(ferry("serve", ".", "--bogus"), code=2)
    assert "not an SLA condition" in one_line_error(
        ferry("loadtest", "http://127.0.0.1:9", "--rate", "1", "--sla", "p50<1us"), code=2
    )


# -- Python classes as users write them ----------------------------------------------------------------
REVIEWS = [
    ("a wonderful, moving film. loved it", 5.0),
    ("great acting and a great story", 5.0),
    ("really good, I would watch it again", 4.0),
    ("fine, nothing special", 3.0),
    ("boring and far too long", 2.0),
    ("awful script, terrible acting. hated it", 1.0),
    ("the worst film of the year, awful", 1.0),
    ("loved the music, great film", 5.0),
]

REVIEWS_CLASS = """\
from pathlib import Path

import joblib
import lightgbm

from featurizer import clean

HERE = Path(__file__).parent


class Reviews:
    def load(self):
        self.vectorizer = joblib.load(HERE / "vectorizer.pkl")
        self.booster = lightgbm.Booster(model_file=str(HERE / "stars.txt"))

    def predict(self, texts):
        return self.booster.predict(self.vectorizer.transform([clean(t) for t in texts]))
"""


def write_reviews_files(folder: Path) -> Path:
    """A user's folder: featurizer.py, a fitted vectorizer that calls it, a LightGBM model file and the class."""
    import lightgbm
    from sklearn.feature_extraction.text import TfidfVectorizer

    (folder / "featurizer.py").write_text("def clean(text):\n    return ' '.join(text.lower().split())\n")
    (folder / "reviews.py").write_text(REVIEWS_CLASS)
    (folder / "requirements.txt").write_text("lightgbm\njoblib\nscikit-learn\n")
    sys.path.insert(0, str(folder))
    try:
        from featurizer import clean  # the vectorizer pickles a reference to it, as at the user's desk

        texts, stars = [t for t, _ in REVIEWS], [s for _, s in REVIEWS]
        vectorizer = TfidfVectorizer(analyzer="word", preprocessor=clean).fit(texts)
        model = lightgbm.LGBMRegressor(n_estimators=30, min_child_samples=1, min_data_in_bin=1, verbose=-1)
        model.fit(vectorizer.transform(texts).astype("float64"), stars)
        joblib.dump(vectorizer, folder / "vectorizer.pkl")
        model.booster_.save_model(str(folder / "stars.txt"))
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("featurizer", None)
    return folder


def test_two_bundles_each_with_its_own_featurizer(tmp_path: Path, serve: Callable[..., ServerProcess]) -> None:
    repo = tmp_path / "models"
    for name in ("alpha", "beta"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "featurizer.py").write_text(f"def clean(text):\n    return '{name}:' + text\n")
        (folder / "tag.py").write_text(
            "from featurizer import clean\n\n\nclass Tag:\n"
            "    def predict(self, texts):\n        return [clean(t) for t in texts]\n"
        )
        built = ferry(
            "build", "tag.py:Tag", "--name", name, "--repo", str(repo), "--text", "text", "--include", "featurizer.py",
            cwd=folder,
        )  # fmt: skip
        assert built.returncode == 0, built.stderr
    server = serve(str(repo), "--grpc-port", "0")
    for name in ("alpha", "beta"):
        answer = httpx.post(server.url + f"/models/{name}/predict", json={"text": "x"}).json()
        assert answer == {"prediction": f"{name}:x"}


def test_seldon_classes_with_feature_names_and_meta(tmp_path: Path, inprocess: Callable[..., InProcessServer]) -> None:
    (tmp_path / "MLScore.py").write_text(
        "class MLScore:\n    def predict(self, X, feature_names):\n        return X\n\n\n"
        "class WithMeta:\n    def predict(self, X, feature_names, meta):\n"
        "        return [[len(feature_names), len(meta)] for _ in X]\n"
    )
    repo = tmp_path / "models"
    assert ferry("build", "MLScore.py:MLScore", "--name", "score", "--repo", str(repo), cwd=tmp_path).returncode == 0
    meta = ferry(
        "build", "MLScore.py:WithMeta", "--name", "meta", "--repo", str(repo), "--features", "a,b", cwd=tmp_path
    )
    assert meta.returncode == 0, meta.stderr
    client = inprocess(repo, "--grpc-port", "0").client
    rows = client.post("/models/score/predict", json=[[1, 2, 3], [4, 5, 6]]).json()
    assert rows == {"predictions": [[1, 2, 3], [4, 5, 6]]}  # any width: no --features needed
    seldon = client.post("/seldon/score/api/v1.0/predictions", json={"data": {"ndarray": [[1, 2]]}})
    assert seldon.status_code == 200, seldon.text
    assert seldon.json()["data"]["ndarray"] == [[1, 2]]
    assert client.post("/models/meta/predict", json={"a": 1, "b": 2}).json() == {"prediction": [2, 0]}


def test_an_instance_with_state_is_refused_not_rebuilt_without_it(tmp_path: Path) -> None:
    import ferry as ferry_api
    from ferry.errors import ManifestError

    (tmp_path / "scale.py").write_text(
        "class Scale:\n    def __init__(self, factor=1.0):\n        self.factor = factor\n\n"
        "    def predict(self, X):\n        return X * self.factor\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        from scale import Scale  # type: ignore[import-not-found]

        with pytest.raises(ManifestError, match=r"Scale instance has state \(factor\)"):
            ferry_api.build(Scale(factor=10.0), name="scale", repo=tmp_path / "models")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("scale", None)
    assert not (tmp_path / "models" / "scale").exists()


# -- MLflow model folders --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mlflow_folders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folders written by mlflow itself: the sklearn flavor in each format, and the lightgbm flavor."""
    mlflow_sklearn = pytest.importorskip("mlflow.sklearn", reason="mlflow is a test extra (pip install mlflow-skinny)")
    import mlflow.lightgbm
    from mlflow.models import infer_signature

    folder = tmp_path_factory.mktemp("mlflow")
    with warnings.catch_warnings():  # mlflow warns about pickle formats, and about its own environment
        warnings.simplefilter("ignore")
        _save_mlflow_models(folder, mlflow_sklearn, mlflow.lightgbm, infer_signature)
    return folder


def _save_mlflow_models(folder: Path, mlflow_sklearn: Any, mlflow_lightgbm: Any, infer_signature: Any) -> None:
    import lightgbm
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    iris = load_iris(as_frame=True)
    x = iris.data.rename(columns=lambda c: c.replace(" (cm)", "").replace(" ", "_"))
    classifier = LogisticRegression(max_iter=500).fit(x, iris.target)
    # Requirements given, as mlflow allows: else it infers them by loading each model in a child process (~7 s
    # each), for requirements.txt and conda.yaml, which `ferry build` never reads.
    for fmt in ("skops", "pickle", "cloudpickle"):
        signature = infer_signature(x, classifier.predict(x))
        mlflow_sklearn.save_model(
            classifier,
            str(folder / fmt),
            serialization_format=fmt,
            signature=signature,
            pip_requirements=["scikit-learn"],
        )
    regressor = lightgbm.LGBMRegressor(n_estimators=10, verbose=-1).fit(x, iris.target.astype(float))
    signature = infer_signature(x, regressor.predict(x))
    mlflow_lightgbm.save_model(regressor, str(folder / "lightgbm"), signature=signature, pip_requirements=["lightgbm"])


SETOSA = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


def build_flowers(mlflow_folders: Path, flavor: str, repo: Path) -> None:
    """``ferry build`` of one mlflow folder with a sample: a pickle is refused until it is ``--trusted``."""
    import json

    args = [
        "build",
        str(mlflow_folders / flavor),
        "--name",
        "flowers",
        "--repo",
        str(repo),
        "--sample",
        json.dumps(SETOSA),
    ]
    if flavor in ("pickle", "cloudpickle"):
        assert "unpickling runs arbitrary code" in one_line_error(ferry(*args))  # the builder's trust, as ever
        args.append("--trusted")
    if flavor != "lightgbm":
        args += ["--labels", IRIS_LABELS, "--expect", "setosa"]
    built = ferry(*args)
    assert built.returncode == 0, built.stderr


@pytest.fixture(scope="module")
def skops_flowers(
    mlflow_folders: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, ServerProcess]]:
    """The skops folder built and served once, for its flavor's test and for the MLflow clients' test."""
    repo = tmp_path_factory.mktemp("flowers") / "models"
    build_flowers(mlflow_folders, "skops", repo)
    server = ServerProcess([str(repo), "--grpc-port", "0"])
    yield repo, server
    server.stop()


@pytest.mark.timeout(900)  # importing mlflow and writing four folders is slow on a busy box
@pytest.mark.parametrize("flavor", ["skops", "pickle", "cloudpickle", "lightgbm"])
def test_an_mlflow_folder_builds_with_its_signature_as_schema(
    mlflow_folders: Path, tmp_path: Path, flavor: str, serve: Callable[..., ServerProcess], request: Any
) -> None:
    if flavor == "skops":
        repo, server = request.getfixturevalue("skops_flowers")
    else:
        repo = tmp_path / "models"
        build_flowers(mlflow_folders, flavor, repo)
        server = serve(str(repo), "--grpc-port", "0")
    manifest = yaml.safe_load((repo / "flowers" / "1" / "ferry.yaml").read_text())
    assert [f["name"] for f in manifest["input"]["features"]] == list(SETOSA)  # from the MLmodel signature
    assert not [a for a in manifest["artifacts"] if a.endswith(".pkl")], "the pickle is rebuilt as skops"
    answer = httpx.post(server.url + "/models/flowers/predict", json=SETOSA).json()
    if flavor == "lightgbm":
        assert answer["prediction"] == pytest.approx(0.0, abs=0.5)
    else:
        assert answer == {"prediction": "setosa", "probabilities": answer["probabilities"]}


@pytest.mark.timeout(900)
def test_mlflow_clients_keep_their_scoring_protocol(skops_flowers: tuple[Path, ServerProcess]) -> None:
    _, server = skops_flowers
    virginica = {"sepal_length": 6.9, "sepal_width": 3.1, "petal_length": 5.4, "petal_width": 2.1}
    columns = list(reversed(SETOSA))  # another column order than the signature's: matched by name
    bodies = [
        {
            "dataframe_split": {
                "columns": columns,
                "data": [[SETOSA[c] for c in columns], [virginica[c] for c in columns]],
            }
        },
        {"dataframe_records": [SETOSA, virginica]},
        {"instances": [SETOSA, virginica]},
        {"inputs": {c: [SETOSA[c], virginica[c]] for c in columns}},
        {"inputs": [list(SETOSA.values()), list(virginica.values())]},
    ]
    for path in ("/invocations", "/models/flowers/invocations"):
        for body in bodies:
            answer = httpx.post(server.url + path, json=body)
            assert answer.json() == {"predictions": ["setosa", "virginica"]}, (path, body, answer.text)
    assert httpx.get(server.url + "/ping").status_code == 200
    bad = httpx.post(server.url + "/invocations", json={"dataframe_split": {"columns": ["a"], "data": [[1]]}})
    assert bad.status_code == 400 and "missing feature 'sepal_length'" in bad.json()["error"]
    both = httpx.post(server.url + "/invocations", json={"instances": [SETOSA], "inputs": [SETOSA]})
    assert both.status_code == 400 and "expected exactly one of" in both.json()["error"]


# -- MLServer repositories ------------------------------------------------------------------------------------
def write_mlserver_repository(folder: Path) -> Path:
    """Two MLServer model folders, as MLServer users write them: a joblib scikit-learn model and a LightGBM booster."""
    import json

    import lightgbm
    import numpy as np
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    iris = load_iris()
    (folder / "iris").mkdir(parents=True)
    joblib.dump(LogisticRegression(max_iter=500).fit(iris.data, iris.target), folder / "iris" / "model.joblib")
    settings = {
        "name": "iris",
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib", "version": "v0.1.0"},
    }
    (folder / "iris" / "model-settings.json").write_text(json.dumps(settings))
    (folder / "petals").mkdir()
    x = iris.data[:, [2]]
    booster = lightgbm.train({"verbose": -1, "min_data_in_leaf": 1}, lightgbm.Dataset(x, x[:, 0] * 2.0), 10)
    booster.save_model(str(folder / "petals" / "model.bst"))
    settings = {"name": "petals", "implementation": "mlserver_lightgbm.LightGBMModel", "parameters": {"version": "2"}}
    (folder / "petals" / "model-settings.json").write_text(json.dumps(settings))
    assert np.isfinite(booster.predict(x)).all()
    return folder


def test_an_mlserver_repository_is_served_as_it_is_on_v2_rest_and_grpc(
    tmp_path: Path, serve: Callable[..., ServerProcess]
) -> None:
    import grpc
    from tests.conftest import free_port

    from ferry.grpc import inference_pb2, inference_pb2_grpc

    source = write_mlserver_repository(tmp_path / "mlserver")
    grpc_port = free_port()
    server = serve(str(source), "--trust-pickle", "--grpc-port", str(grpc_port))
    body = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]}
    answer = httpx.post(server.url + "/v2/models/iris/versions/v0.1.0/infer", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["model_version"] == "v0.1.0" and answer.json()["outputs"][0]["data"] == [
        0
    ]  # an integer class, as MLServer answers
    # MLServer takes a model's one input whatever its name; so do the converted models, and their schema says so.
    document = httpx.get(server.url + "/openapi.json").json()
    body = document["paths"]["/v2/models/iris/infer"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    name = body["properties"]["inputs"]["items"]["oneOf"][0]["properties"]["name"]
    assert "enum" not in name and name["not"]["enum"]  # any name but a feature's
    petals = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 1], "data": [1.4]}]}
    answer = httpx.post(server.url + "/v2/models/petals/versions/2/infer", json=petals)
    import lightgbm

    expected = lightgbm.Booster(model_file=str(source / "petals" / "model.bst")).predict([[1.4]])[0]
    assert answer.status_code == 200 and answer.json()["outputs"][0]["data"][0] == pytest.approx(expected, rel=1e-9)
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        tensor = inference_pb2.ModelInferRequest.InferInputTensor(name="x", datatype="FP64", shape=[1, 1])
        tensor.contents.fp64_contents.extend([1.4])
        request = inference_pb2.ModelInferRequest(model_name="petals", model_version="2", inputs=[tensor])
        reply = stub.ModelInfer(request, timeout=30)
        assert reply.model_version == "2"
