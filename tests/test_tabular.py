"""Issue 21: the user's tabular model, faithfully, made by the user's own library and served through the CLI.

A scikit-learn Pipeline whose ColumnTransformer selects string and numeric columns by name (joblib), the same
model saved by ``mlflow.sklearn.save_model`` with a signature of string columns, and a LightGBM model fitted on
pandas categoricals: built with ``ferry build`` (a child process), served by ``ferry serve``, and asked on every
protocol; each answer is compared with the library's own ``predict`` / ``predict_proba`` on the same rows,
value types and output names included.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from tests.conftest import ServerProcess, free_port
from tests.inprocess import inprocess_fixture  # noqa: F401 (the fixture)
from tests.test_byom import ferry, one_line_error

pd = pytest.importorskip("pandas")

COLUMNS = ["sex", "pclass", "age", "embarked"]


def passengers(n: int, seed: int) -> Any:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "sex": rng.choice(["male", "female"], n),
            "pclass": rng.integers(1, 4, n),
            "age": rng.normal(30, 10, n).round(1),
            "embarked": rng.choice(["C", "Q", "S"], n),
        }
    )


def titanic_pipeline() -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    frame = passengers(400, 0)
    survived = ((frame.sex == "female") & (frame.pclass < 3) | (frame.age < 20)).astype(int)
    columns = ColumnTransformer(
        [
            ("text", OneHotEncoder(handle_unknown="ignore"), ["sex", "embarked"]),
            ("numbers", StandardScaler(), ["age", "pclass"]),
        ]
    )
    return Pipeline([("columns", columns), ("model", LogisticRegression())]).fit(frame, survived)


def lightgbm_categorical() -> Any:
    import lightgbm

    frame = passengers(400, 1).assign(embarked=lambda f: f.embarked.astype("category"))
    fare = ((frame.embarked == "C") * 3 + frame.pclass + (frame.sex == "female")).astype(int) % 3
    frame = frame.drop(columns=["sex"])
    return lightgbm.LGBMClassifier(n_estimators=20, min_child_samples=5, verbose=-1).fit(frame, fare), frame


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("tabular")
    repo = folder / "models"
    pipeline = titanic_pipeline()
    joblib.dump(pipeline, folder / "titanic.joblib")
    built = ferry("build", str(folder / "titanic.joblib"), "--name", "titanic", "--repo", str(repo), "--trusted")
    assert built.returncode == 0, built.stderr

    booster, lgb_frame = lightgbm_categorical()
    joblib.dump(booster, folder / "ports.joblib")
    built = ferry("build", str(folder / "ports.joblib"), "--name", "ports", "--repo", str(repo), "--trusted")
    assert built.returncode == 0, built.stderr
    booster.booster_.save_model(str(folder / "ports.txt"))  # LightGBM's own file: a Booster, no classes
    built = ferry("build", str(folder / "ports.txt"), "--name", "booster", "--repo", str(repo))
    assert built.returncode == 0, built.stderr

    port = free_port()
    server = ServerProcess([str(repo), "--grpc-port", str(port)])
    server.grpc_port = port
    yield {"server": server, "pipeline": pipeline, "booster": booster, "lgb_frame": lgb_frame, "repo": repo}
    server.stop()


def _rows() -> Any:
    return passengers(12, 7)


def _records(frame: Any) -> list[dict[str, Any]]:
    return json.loads(frame.to_json(orient="records"))


def test_the_pipeline_answers_as_its_own_predict_on_every_http_protocol(served: dict[str, Any]) -> None:
    url, pipeline, frame = served["server"].url, served["pipeline"], _rows()
    expected = pipeline.predict(frame).tolist()
    proba = pipeline.predict_proba(frame)
    assert all(type(v) is int for v in expected) and len(set(expected)) == 2
    records = _records(frame)
    rows = [[r[c] for c in COLUMNS] for r in records]

    native = httpx.post(f"{url}/models/titanic/predict", json=records).json()
    assert native["predictions"] == expected  # 1 == 1, never "1"
    assert np.allclose([[p["0"], p["1"]] for p in native["probabilities"]], proba)
    assert httpx.post(f"{url}/models/titanic/predict", json=rows).json()["predictions"] == expected
    single = httpx.post(f"{url}/models/titanic/predict", json=records[0]).json()
    assert single["prediction"] == expected[0] and type(single["prediction"]) is int

    assert httpx.post(f"{url}/v1/models/titanic:predict", json={"instances": records}).json() == {
        "predictions": expected
    }
    assert httpx.post(f"{url}/v1/models/titanic:predict", json={"instances": rows}).json()["predictions"] == expected

    split = {"dataframe_split": json.loads(frame.to_json(orient="split", index=False))}
    for body in (split, {"dataframe_records": records}, {"inputs": {c: frame[c].tolist() for c in COLUMNS}}):
        assert httpx.post(f"{url}/models/titanic/invocations", json=body).json() == {"predictions": expected}, body

    seldon = {"data": {"names": COLUMNS[::-1], "ndarray": [row[::-1] for row in rows]}}
    answer = httpx.post(f"{url}/seldon/titanic/api/v1.0/predictions", json=seldon).json()
    assert answer["data"]["names"] == ["0", "1"] and np.allclose(answer["data"]["ndarray"], proba)


def _v2_columns(frame: Any) -> list[dict[str, Any]]:
    """One input per column, as MLServer's pandas codec sends them: BYTES for text, INT64 and FP64 for numbers."""
    types = {"sex": "BYTES", "embarked": "BYTES", "pclass": "INT64", "age": "FP64"}
    return [
        {"name": c, "datatype": types[c], "shape": [len(frame)], "data": frame[c].tolist()}
        for c in frame.columns
        if c in types
    ]


def test_v2_answers_predict_and_predict_proba_as_mlserver_names_them(served: dict[str, Any]) -> None:
    url, pipeline, frame = served["server"].url, served["pipeline"], _rows()
    expected = pipeline.predict(frame).tolist()
    body = httpx.post(f"{url}/v2/models/titanic/infer", json={"inputs": _v2_columns(frame)}).json()
    outputs = {o["name"]: o for o in body["outputs"]}
    assert [o["name"] for o in body["outputs"]] == ["predict", "predict_proba"]
    assert outputs["predict"]["datatype"] == "INT64" and outputs["predict"]["data"] == expected
    assert outputs["predict_proba"]["shape"] == [len(frame), 2]
    assert np.allclose(np.reshape(outputs["predict_proba"]["data"], (-1, 2)), pipeline.predict_proba(frame))
    metadata = httpx.get(f"{url}/v2/models/titanic").json()
    assert [(o["name"], o["datatype"]) for o in metadata["outputs"]] == [
        (o["name"], o["datatype"]) for o in body["outputs"]
    ]
    assert [(i["name"], i["datatype"]) for i in metadata["inputs"]] == [
        ("sex", "BYTES"),
        ("pclass", "FP64"),
        ("age", "FP64"),
        ("embarked", "BYTES"),
    ]
    # an MLServer client asks for its output by name; Ferry's earlier name stays an alias
    asked = {"inputs": _v2_columns(frame), "outputs": [{"name": "predict"}]}
    assert [o["name"] for o in httpx.post(f"{url}/v2/models/titanic/infer", json=asked).json()["outputs"]] == [
        "predict"
    ]
    asked["outputs"] = [{"name": "label"}]
    label = httpx.post(f"{url}/v2/models/titanic/infer", json=asked).json()["outputs"][0]
    assert label["name"] == "label" and label["data"] == expected


def test_grpc_takes_one_tensor_per_column_and_answers_typed_labels(served: dict[str, Any]) -> None:
    server, pipeline, frame = served["server"], served["pipeline"], _rows()
    client = triton_grpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    inputs = []
    for column, datatype in (("sex", "BYTES"), ("pclass", "INT64"), ("age", "FP64"), ("embarked", "BYTES")):
        values = frame[column].to_numpy().astype({"BYTES": object, "INT64": np.int64, "FP64": np.float64}[datatype])
        tensor = triton_grpc.InferInput(column, [len(frame)], datatype)
        tensor.set_data_from_numpy(values)
        inputs.append(tensor)
    result = client.infer("titanic", inputs, outputs=[triton_grpc.InferRequestedOutput("predict")])
    predict = result.as_numpy("predict")
    assert predict.dtype == np.int64 and predict.tolist() == pipeline.predict(frame).tolist()


def test_bad_input_is_a_400_naming_the_column(served: dict[str, Any]) -> None:
    url = served["server"].url
    record = _records(_rows())[0]
    response = httpx.post(f"{url}/models/titanic/predict", json={**record, "sex": 3})
    assert response.status_code == 400 and "sex" in response.text and "string" in response.text
    bad = _v2_columns(_rows())
    bad[0] = {**bad[0], "datatype": "FP64", "data": [1.0] * 12}
    response = httpx.post(f"{url}/v2/models/titanic/infer", json={"inputs": bad})
    assert response.status_code == 400 and "sex" in response.text


def test_lightgbm_categoricals_are_sent_as_their_categories(served: dict[str, Any]) -> None:
    url, booster, frame = served["server"].url, served["booster"], served["lgb_frame"].head(8)
    expected = booster.predict(frame).tolist()
    proba = booster.predict_proba(frame)
    records = _records(frame.astype({"embarked": str}))
    assert all(isinstance(r["embarked"], str) for r in records)  # "C", not its code
    native = httpx.post(f"{url}/models/ports/predict", json=records).json()
    assert native["predictions"] == expected and all(type(v) is int for v in native["predictions"])
    assert np.allclose([list(p.values()) for p in native["probabilities"]], proba)
    inputs = _v2_columns(frame.astype({"embarked": str}))
    body = httpx.post(f"{url}/v2/models/ports/infer", json={"inputs": inputs}).json()
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["predict"]["data"] == expected
    assert outputs["predict_proba"]["shape"] == [8, 3]
    metadata = httpx.get(f"{url}/v2/models/ports").json()
    assert {o["name"]: o["shape"] for o in metadata["outputs"]} == {"predict": [-1], "predict_proba": [-1, 3]}

    # LightGBM's own text file holds a Booster, whose predict answers a probability per class: so does Ferry,
    # and its metadata says [-1, 3] (it said [-1])
    raw = booster.booster_.predict(frame)
    body = httpx.post(f"{url}/v2/models/booster/infer", json={"inputs": inputs}).json()
    assert body["outputs"][0]["shape"] == [8, 3]
    assert np.allclose(np.reshape(body["outputs"][0]["data"], (8, 3)), raw)
    metadata = httpx.get(f"{url}/v2/models/booster").json()
    assert [(o["name"], o["shape"]) for o in metadata["outputs"]] == [("predict", [-1, 3])]


@pytest.mark.timeout(600)
def test_an_mlflow_model_with_string_columns_builds_and_serves(tmp_path: Path, inprocess: Any) -> None:
    """Its signature names string columns: the generated sample holds strings (it used to send 0.0)."""
    mlflow_sklearn = pytest.importorskip("mlflow.sklearn")
    from mlflow.models import infer_signature

    pipeline = titanic_pipeline()
    frame = passengers(50, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlflow_sklearn.save_model(
            pipeline,
            str(tmp_path / "model"),
            serialization_format="pickle",
            signature=infer_signature(frame, pipeline.predict(frame)),
            pip_requirements=["scikit-learn"],
        )
    built = ferry(
        "build", str(tmp_path / "model"), "--name", "titanic", "--repo", str(tmp_path / "models"), "--trusted"
    )
    assert built.returncode == 0, built.stderr
    client = inprocess(tmp_path / "models").client
    rows = _rows()
    split = {"dataframe_split": json.loads(rows.to_json(orient="split", index=False))}
    answer = client.post("/invocations", json=split).json()
    assert answer == {"predictions": pipeline.predict(rows).tolist()}


def test_a_column_no_one_can_type_fails_the_build_naming_the_option(tmp_path: Path) -> None:
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer, OneHotEncoder

    frame = passengers(100, 4)
    columns = ColumnTransformer([("text", OneHotEncoder(), ["sex"]), ("own", FunctionTransformer(np.log1p), ["age"])])
    model = Pipeline([("c", columns), ("m", LogisticRegression())]).fit(frame[["sex", "age"]], frame.pclass)
    joblib.dump(model, tmp_path / "m.joblib")
    args = ["build", str(tmp_path / "m.joblib"), "--name", "m", "--repo", str(tmp_path / "models"), "--trusted"]
    line = one_line_error(ferry(*args))
    assert "column 'age'" in line and "--features age:TYPE" in line and "--sample" in line
    typed = ferry(*args, "--features", "sex:string,age:float")
    assert typed.returncode == 0, typed.stderr
    sampled = ferry(*args, "--version", "2", "--sample", '{"sex": "male", "age": 30.5}', "--expect", "2")
    assert sampled.returncode == 0 or "expected 2" in sampled.stderr, sampled.stderr


def test_built_means_it_serves_with_clipping_and_typed_expectations(tmp_path: Path) -> None:
    """The build answers its sample through the server's own path, clipping included, whether or not --expect."""
    from sklearn.linear_model import LinearRegression

    import ferry as ferry_api
    from ferry.errors import ManifestError

    x = np.array([[0.0], [1.0], [2.0]])
    sevens = LinearRegression().fit(x, [7.0, 7.0, 7.0])
    options: dict[str, Any] = {
        "name": "stars",
        "features": ["x"],
        "output_schema": {"kind": "number", "max": 5},
        "sample_input": {"x": 1.0},
    }
    with pytest.raises(ManifestError, match="expected 7, got 5"):
        ferry_api.build(sevens, repo=tmp_path, expected_output=7, **options)
    assert ferry_api.build(sevens, repo=tmp_path, expected_output=5, **options).is_dir()

    # a sample the model cannot take fails the build, though nothing was expected
    with pytest.raises(ManifestError, match=r"sample input failed: .*Expected `number`, got `string` - at `\$.x`"):
        ferry_api.build(sevens, repo=tmp_path, **{**options, "name": "broken", "sample_input": {"x": "one"}})

    from sklearn.linear_model import LogisticRegression

    zero_one = LogisticRegression().fit(x, [0, 1, 1])
    typed = {"name": "binary", "features": ["x"], "sample_input": {"x": 2.0}}
    assert ferry_api.build(zero_one, repo=tmp_path, expected_output=1, **typed).is_dir()  # 1 is 1
    with pytest.raises(ManifestError, match=r'expected 1 \(a number\), got "1" \(a string\)'):
        ferry_api.build(zero_one, repo=tmp_path, expected_output=1, labels=["0", "1"], **{**typed, "name": "named"})


def test_a_value_the_encoder_refuses_is_a_400_naming_the_column(tmp_path: Path, inprocess: Any) -> None:
    """OneHotEncoder's default (handle_unknown='error') raises on a category it was not fitted on: the client's
    mistake, answered as a 400 naming the column on every protocol, never the model's ValueError as a 500."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    frame = passengers(300, 3)
    strict = Pipeline(
        [
            (
                "columns",
                ColumnTransformer(
                    [("text", OneHotEncoder(), ["sex", "embarked"]), ("n", StandardScaler(), ["age", "pclass"])]
                ),
            ),
            ("model", LogisticRegression()),
        ]
    ).fit(frame, (frame.sex == "female").astype(int))
    joblib.dump(strict, tmp_path / "strict.joblib")
    built = ferry(
        "build", str(tmp_path / "strict.joblib"), "--name", "strict", "--repo", str(tmp_path / "m"), "--trusted"
    )
    assert built.returncode == 0, built.stderr
    client = inprocess(tmp_path / "m").client
    good = _records(_rows())
    assert client.post("/models/strict/predict", json=good).json()["predictions"] == strict.predict(_rows()).tolist()
    bad = {**good[0], "embarked": "X"}
    for response in (
        client.post("/models/strict/predict", json=[good[1], bad]),
        client.post("/models/strict/predict", json=[[bad[c] for c in COLUMNS]]),
        client.post("/invocations", json={"dataframe_records": [bad]}),
        client.post(
            "/v2/models/strict/infer",
            json={"inputs": _v2_columns(pd.DataFrame([bad]))},
        ),
    ):
        assert response.status_code == 400, response.text
        assert "unknown value 'X' for feature 'embarked'" in response.json()["error"], response.text
    # the field names the record and the column: the second record sent, the one KServe instance, the one object
    for body, path, field in (
        ([good[1], bad], "/models/strict/predict", "$[1].embarked"),
        ({"instances": [bad]}, "/v1/models/strict:predict", "$.instances[0].embarked"),
        (bad, "/models/strict/predict", "$.embarked"),
    ):
        assert client.post(path, json=body).json()["field"] == field


def test_float_classes_answer_as_floats(tmp_path: Path, inprocess: Any) -> None:
    """A classifier fitted on float classes answers them as numbers, as its predict does, not as text."""
    from sklearn.linear_model import LogisticRegression

    import ferry as ferry_package

    x = np.random.default_rng(4).normal(size=(200, 2))
    classes = np.where(x[:, 0] > 0, 3.0, 1.0)  # a float column of classes, as pandas often holds them
    model = LogisticRegression().fit(x, classes)
    ferry_package.build(model, "grades", tmp_path / "m", features=["a", "b"])
    client = inprocess(tmp_path / "m").client
    rows = x[:5].tolist()
    native = client.post("/models/grades/predict", json=rows).json()["predictions"]
    assert native == model.predict(x[:5]).tolist() and all(type(v) is float for v in native)
    kserve = client.post("/v1/models/grades:predict", json={"instances": rows}).json()["predictions"]
    assert kserve == native
    body = {"inputs": [{"name": "input", "datatype": "FP64", "shape": [5, 2], "data": rows}]}
    output = client.post("/v2/models/grades/infer", json=body).json()["outputs"][0]
    assert (output["name"], output["datatype"], output["data"]) == ("predict", "FP64", native)


def test_v2_takes_one_bytes_matrix_of_text_for_a_mixed_model(served: dict[str, Any]) -> None:
    """A client holding a mixed DataFrame may send it as one BYTES [n, columns] tensor: each column's text is
    read as its feature's type; a value that does not read is a 400 naming its place."""
    url, pipeline = served["server"].url, served["pipeline"]
    rows = _rows()
    text = [[str(v) for v in row] for row in rows[COLUMNS].itertuples(index=False)]
    body = {"inputs": [{"name": "input", "datatype": "BYTES", "shape": [len(text), 4], "data": text}]}
    answer = httpx.post(f"{url}/v2/models/titanic/infer", json=body).json()
    assert answer["outputs"][0]["data"] == pipeline.predict(rows).tolist()
    text[2][2] = "old"  # age
    body["inputs"][0]["data"] = text
    response = httpx.post(f"{url}/v2/models/titanic/infer", json=body)
    assert response.status_code == 400 and response.json()["field"] == "$.inputs[0].data[2][2]", response.text
    assert "'old' is not a number" in response.json()["error"]
    body["inputs"][0] = {**body["inputs"][0], "datatype": "FP64", "data": [[0.0] * 4] * len(text)}
    response = httpx.post(f"{url}/v2/models/titanic/infer", json=body)
    assert response.status_code == 400 and "one BYTES [-1, 4] tensor" in response.json()["error"]


def test_the_image_pins_pandas_and_what_each_model_file_imports(served: dict[str, Any]) -> None:
    """A DataFrame pipeline needs pandas in the image, and a LightGBM estimator pickled by joblib needs LightGBM,
    though neither is Ferry's extra for the runtime that serves it: both are read from the bundles, pinned with
    what they need (a new user's image could not load the titanic pipeline: pandas was missing)."""
    from ferry.deploy.dockerfile import image_spec_for, render_requirements

    spec = image_spec_for(served["repo"], "tabular:1", original_models=True)
    packages = {m.name: set(m.packages) for m in spec.models}
    assert {"pandas", "scikit-learn", "numpy"} <= packages["titanic"], packages
    assert {"pandas", "lightgbm"} <= packages["ports"], packages
    assert packages["booster"] == {"pandas"}  # LightGBM's own text file imports nothing; its categorical column
    # makes the runtime call it with a DataFrame
    pins = dict(line.split("==") for line in render_requirements(spec).splitlines() if "==" in line)
    assert pins["pandas"] == pd.__version__ and "python-dateutil" in pins, pins  # pandas and what it needs


@pytest.mark.parametrize("compress", [0, 3, ("gzip", 3), ("bz2", 3), ("xz", 3), ("lzma", 3)])
def test_what_a_joblib_file_imports_is_read_whatever_its_compression(tmp_path: Path, compress: Any) -> None:
    """Read without loading it, up to its first numpy array (joblib writes arrays' bytes inline)."""
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from ferry.bundle.trust import model_imports

    frame = passengers(200, 2)[["age", "pclass"]]
    joblib.dump(Pipeline([("scale", StandardScaler())]).fit(frame), tmp_path / "m.joblib", compress=compress)
    imports = model_imports(tmp_path / "m.joblib")
    assert {"sklearn.pipeline.Pipeline", "sklearn.preprocessing._data.StandardScaler"} <= set(imports), imports


def test_a_skops_pipeline_names_its_third_party_step_for_the_image(tmp_path: Path) -> None:
    import lightgbm
    import skops.io
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from ferry.bundle.trust import model_imports

    frame = passengers(200, 2)[["age", "pclass"]]
    model = Pipeline([("scale", StandardScaler()), ("model", lightgbm.LGBMClassifier(n_estimators=5, verbose=-1))])
    skops.io.dump(model.fit(frame, frame.pclass), tmp_path / "m.skops")
    assert "lightgbm.sklearn.LGBMClassifier" in model_imports(tmp_path / "m.skops")


def test_the_python_api_builds_the_standard_pipeline_with_an_imputer(tmp_path: Path, inprocess: Any) -> None:
    """``ferry.build(pipeline)``, the README's first way: the ColumnTransformer pipeline with a SimpleImputer over
    columns with missing ages builds (its skops file names ``numpy.dtype``, which the build used to refuse as an
    untrusted type) and answers as its own predict and predict_proba, integer labels as integers."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    import ferry as ferry_api

    frame = passengers(300, 4)
    frame.loc[::7, "age"] = np.nan
    columns = ColumnTransformer(
        [
            ("text", make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder()), ["sex", "embarked"]),
            ("numbers", make_pipeline(SimpleImputer(), StandardScaler()), ["age", "pclass"]),
        ]
    )
    model = Pipeline([("columns", columns), ("model", LogisticRegression())])
    model.fit(frame, frame.pclass)
    ferry_api.build(model, name="imputed", repo=tmp_path / "m")
    rows = frame.head(5)
    answer = inprocess(tmp_path / "m").client.post("/models/imputed/predict", json=_records(rows)).json()
    assert answer["predictions"] == model.predict(rows).tolist() and all(type(p) is int for p in answer["predictions"])
    labels = [str(c) for c in model.classes_]  # a JSON object's keys are text
    assert np.allclose([[p[c] for c in labels] for p in answer["probabilities"]], model.predict_proba(rows))
    # a missing age, which the imputer fills: null in a record, and null in an Open Inference v2 JSON tensor (JSON
    # has no NaN; it was a 400 there, so only binary tensors or gRPC could carry it)
    missing = frame.head(4).assign(age=[np.nan, 30.0, np.nan, 41.5])
    client = inprocess(tmp_path / "m").client
    inputs = [{**i, "data": [None if v != v else v for v in i["data"]]} for i in _v2_columns(missing)]
    v2 = client.post("/v2/models/imputed/infer", json={"inputs": inputs})
    assert v2.status_code == 200, v2.text
    assert v2.json()["outputs"][0]["data"] == model.predict(missing).tolist()
    # an integer tensor has no missing value: null there is refused, naming the tensor
    ints = [{**i, "data": [None] * 4} if i["name"] == "pclass" else i for i in inputs]
    refused = client.post("/v2/models/imputed/infer", json={"inputs": ints}).json()
    assert refused["field"] == "$.inputs[1].data" and "null (a missing value) in INT64 data" in refused["error"]


def test_an_image_of_a_joblib_pipeline_says_it_needs_trust_and_takes_it(served: dict[str, Any], tmp_path: Path) -> None:
    """A joblib file loads only on the operator's --trust-pickle: containerize warns that the image would serve it
    FAILED without it, and with it the image's verify step and its server both unpickle (a new user's image had
    verify pass and the model FAILED, with no deploy command that could grant the trust)."""
    from ferry.deploy.spec import DeploySpec

    repo, tag = str(served["repo"]), "tabular:1"
    plain = ferry("containerize", repo, "--tag", tag, "-o", str(tmp_path / "plain"))
    assert plain.returncode == 0, plain.stderr
    said = " ".join((plain.stdout + plain.stderr).split())
    assert "titanic:1 loads only with --trust-pickle" in said and "FERRY_TRUST_PICKLE=1" in said, said
    assert "ports:1 loads only with --trust-pickle" in said  # the LGBMClassifier, pickled by joblib
    assert "booster:1" not in said  # LightGBM's own text: no pickle
    trusted = ferry("containerize", repo, "--tag", tag, "-o", str(tmp_path / "trusted"), "--trust-pickle")
    assert trusted.returncode == 0 and "loads only with" not in trusted.stdout + trusted.stderr, trusted.stderr
    dockerfile = (tmp_path / "trusted" / "Dockerfile").read_text()
    assert '"verify", "/models", "--trust-pickle"]' in dockerfile and "FERRY_TRUST_PICKLE=true" in dockerfile
    assert "--trust-pickle" not in (tmp_path / "plain" / "Dockerfile").read_text()
    # the other deployments grant it the same way, as the pods' environment
    assert DeploySpec(image=tag, trust_pickle=True).server_env()["FERRY_TRUST_PICKLE"] == "true"
    k8s = ferry("k8s", repo, "--image", tag, "-o", str(tmp_path / "k8s"), "--trust-pickle")
    assert k8s.returncode == 0, k8s.stderr
    assert "FERRY_TRUST_PICKLE" in (tmp_path / "k8s" / "10-configmap.yaml").read_text()


def test_a_histgradientboosting_model_on_pandas_categoricals_takes_the_categories(
    tmp_path: Path, inprocess: Any
) -> None:
    """scikit-learn's own way with categorical data, categorical_features="from_dtype" (the default since 1.6) on
    a DataFrame's category column: clients send the categories; an unseen or missing one is the model's missing
    value, as in its own predict. (The build failed at warm-up: the column was typed as a number.)"""
    from sklearn.ensemble import HistGradientBoostingClassifier

    rng = np.random.default_rng(8)
    frame = pd.DataFrame(
        {"num": rng.normal(size=400), "colour": pd.Categorical(rng.choice(["red", "blue", "green"], 400))}
    )
    model = HistGradientBoostingClassifier(max_iter=20, categorical_features="from_dtype")
    model.fit(frame, ((frame.colour == "blue") | (frame.num > 1)).astype(int))
    joblib.dump(model, tmp_path / "hgb.joblib")
    built = ferry("build", str(tmp_path / "hgb.joblib"), "--name", "hgb", "--repo", str(tmp_path / "m"), "--trusted")
    assert built.returncode == 0, built.stderr
    nums, colours = [0.1, 2.0, -0.5, 0.3, 0.2], ["blue", "red", "green", "purple", None]
    asked = pd.DataFrame({"num": nums, "colour": colours})
    records = [{"num": n, "colour": c} for n, c in zip(nums, colours, strict=True)]
    answer = inprocess(tmp_path / "m", env={"FERRY_TRUST_PICKLE": "1"}).client.post("/models/hgb/predict", json=records)
    assert answer.status_code == 200, answer.text
    assert answer.json()["predictions"] == model.predict(asked).tolist()
    got = [[p["0"], p["1"]] for p in answer.json()["probabilities"]]
    assert np.allclose(got, model.predict_proba(asked), rtol=1e-12, atol=0)


def test_passthrough_columns_build_without_a_sample(tmp_path: Path, inprocess: Any) -> None:
    """A fitted ColumnTransformer (scikit-learn 1.5+) keeps "passthrough" as a FunctionTransformer with no
    function: the columns reach the model as numbers. The build asked for a --sample to type them."""
    from sklearn.compose import make_column_transformer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OrdinalEncoder

    frame = passengers(300, 9)
    columns = make_column_transformer((OrdinalEncoder(), ["sex", "embarked"]), ("passthrough", ["age", "pclass"]))
    model = make_pipeline(columns, RandomForestClassifier(n_estimators=10, random_state=0))
    model.fit(frame, (frame.age > 30).astype(int))
    joblib.dump(model, tmp_path / "rf.joblib")
    built = ferry("build", str(tmp_path / "rf.joblib"), "--name", "rf", "--repo", str(tmp_path / "m"), "--trusted")
    assert built.returncode == 0, built.stderr
    rows = passengers(5, 10)
    client = inprocess(tmp_path / "m", env={"FERRY_TRUST_PICKLE": "1"}).client
    assert client.post("/models/rf/predict", json=_records(rows)).json()["predictions"] == model.predict(rows).tolist()


def test_columns_the_model_drops_take_whatever_the_record_holds(tmp_path: Path, inprocess: Any) -> None:
    """A ColumnTransformer drops the columns it names no transformer for (``remainder="drop"``, its default):
    clients send their whole record, an id as text, a flag as a boolean, and get the model's answer; those
    columns were typed as numbers, so such a record was a 400 for a column the model never reads."""
    from sklearn.compose import make_column_transformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    frame = passengers(300, 11).assign(passenger_id=[f"P{i}" for i in range(300)], vip=lambda f: f.age > 40)
    columns = make_column_transformer((OneHotEncoder(), ["sex", "embarked"]), (StandardScaler(), ["age", "pclass"]))
    model = make_pipeline(columns, LogisticRegression()).fit(frame, frame.sex == "female")
    joblib.dump(model, tmp_path / "m.joblib")
    built = ferry("build", str(tmp_path / "m.joblib"), "--name", "m", "--repo", str(tmp_path / "r"), "--trusted")
    assert built.returncode == 0, built.stderr
    rows = frame.head(4)
    records = _records(rows)
    records[1]["passenger_id"], records[2]["vip"] = None, 7  # null, or another type: never read either
    client = inprocess(tmp_path / "r", env={"FERRY_TRUST_PICKLE": "1"}).client
    answer = client.post("/models/m/predict", json=records)
    assert answer.status_code == 200, answer.text
    assert answer.json()["predictions"] == model.predict(rows).tolist()
    ids = {"name": "passenger_id", "datatype": "BYTES", "shape": [4], "data": list(rows.passenger_id)}
    flags = {"name": "vip", "datatype": "BOOL", "shape": [4], "data": [bool(v) for v in rows.vip]}
    inputs = [*_v2_columns(rows), ids, flags]
    v2 = client.post("/v2/models/m/infer", json={"inputs": inputs})
    assert v2.status_code == 200, v2.text
    assert v2.json()["outputs"][0]["data"] == model.predict(rows).tolist()
