"""Bundles: build, manifest validation, integrity, trust, version drift, and each runtime."""

from __future__ import annotations

import json
from pathlib import Path

import joblib
import numpy as np
import pytest
import yaml
from sklearn.linear_model import LogisticRegression

import ferry
from ferry.bundle import read_manifest, scan_repository
from ferry.bundle.manifest import parse_manifest
from ferry.bundle.repository import version_key
from ferry.errors import IntegrityError, ManifestError, UntrustedPickle
from ferry.runtimes.load import load_bundle


def _classifier() -> LogisticRegression:
    x = np.array([[0.0, 0.0], [0.1, 0.2], [1.0, 1.0], [0.9, 1.1]])
    return LogisticRegression().fit(x, [0, 0, 1, 1])


def test_build_writes_manifest_with_hashes_and_inferred_schema(tmp_path: Path) -> None:
    path = ferry.build(_classifier(), "clf", tmp_path, features=["a", "b"], labels=["no", "yes"])
    manifest = read_manifest(path)
    assert path == tmp_path / "clf" / "1"
    assert manifest.runtime == "sklearn"
    assert [f.name for f in manifest.input.features] == ["a", "b"]
    assert manifest.output.kind == "label"
    assert manifest.labels == ["no", "yes"]
    assert set(manifest.artifacts) == {
        "model.skops",
        "compiled-coef.npy",
        "compiled-intercept.npy",
        "compiled-classes.npy",
    }
    assert len(manifest.artifacts["model.skops"]) == 64
    assert manifest.metadata["libraries"]["scikit-learn"]
    assert manifest.sample_input == {"a": 0.0, "b": 0.0}
    # the next build of the same name gets the next version
    assert ferry.build(_classifier(), "clf", tmp_path).name == "2"


def test_loaded_sklearn_bundle_predicts_labels_and_probabilities(tmp_path: Path) -> None:
    loaded = load_bundle(ferry.build(_classifier(), "clf", tmp_path, labels=["no", "yes"]))
    prediction = loaded.runtime.predict(np.array([[0.0, 0.1], [1.0, 1.0]]))
    assert prediction.values == ["no", "yes"]
    assert prediction.probabilities is not None
    assert prediction.probabilities.shape == (2, 2)
    np.testing.assert_allclose(prediction.probabilities.sum(axis=1), 1.0)


def test_changed_artifact_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = ferry.build(_classifier(), "clf", tmp_path)
    with (path / "model.skops").open("ab") as fh:
        fh.write(b"tampered")
    with pytest.raises(IntegrityError, match=r"artifact 'model.skops' has changed"):
        load_bundle(path)


def test_missing_artifact_is_refused(tmp_path: Path) -> None:
    path = ferry.build(_classifier(), "clf", tmp_path)
    (path / "model.skops").unlink()
    with pytest.raises(IntegrityError, match=r"'model.skops' is listed in the manifest but missing"):
        load_bundle(path)


def _pickle_bundle(tmp_path: Path) -> Path:
    model_file = tmp_path / "model.joblib"
    joblib.dump(_classifier(), model_file)
    with pytest.raises(UntrustedPickle, match="unpickling runs arbitrary code"):
        ferry.build(model_file, "pkl", tmp_path / "repo")
    return ferry.build(model_file, "pkl", tmp_path / "repo", trusted=True)


def test_pickle_loads_only_when_the_server_trusts_it(tmp_path: Path) -> None:
    path = _pickle_bundle(tmp_path)
    # The builder's --trusted is recorded in the bundle, but a bundle cannot vouch for itself ...
    with pytest.raises(UntrustedPickle, match=r"'model.joblib' is a pickle, and unpickling runs arbitrary code"):
        load_bundle(path, original=True)
    # ... only the server can (tests/test_trust.py covers pickles under other names).
    assert load_bundle(path, trust_pickle=True, original=True).runtime.predict(np.array([[0.0, 0.0]])).values == [0]
    # Its compiled form is plain arrays (no unpickling), verified at build by the builder who trusted it.
    assert load_bundle(path).runtime.predict(np.array([[0.0, 0.0]])).values == [0]


def test_library_version_drift_warns_with_both_versions(tmp_path: Path) -> None:
    path = ferry.build(_classifier(), "clf", tmp_path)
    manifest_path = path / "ferry.yaml"
    raw = yaml.safe_load(manifest_path.read_text())
    raw["metadata"]["libraries"]["scikit-learn"] = "0.20.0"
    manifest_path.write_text(yaml.safe_dump(raw))
    import sklearn

    assert load_bundle(path).warnings == []  # the compiled form does not run scikit-learn
    loaded = load_bundle(path, original=True)
    assert loaded.warnings == [
        f"clf:1 was built with scikit-learn 0.20.0 but scikit-learn {sklearn.__version__} is installed; "
        "predictions may differ"
    ]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"runtime": "tensorflow"}, r"Invalid enum value 'tensorflow' - at `\$.runtime`"),
        ({"input": {"kind": "features"}}, r"input.features is empty - at `\$.input.features`"),
        ({"output": {"kind": "label"}, "labels": None}, r"needs labels - at `\$.labels`"),
        ({"colour": "blue"}, r"Object contains unknown field `colour`"),
        ({"artifacts": {}}, r"no artifacts listed"),
    ],
)
def test_manifest_validation_names_the_field(change: dict[str, object], message: str) -> None:
    raw: dict[str, object] = {
        "name": "m",
        "version": "1",
        "runtime": "sklearn",
        "input": {"kind": "features", "features": [{"name": "x"}]},
        "output": {"kind": "number"},
        "artifacts": {"model.skops": "0" * 64},
    }
    raw.update(change)
    raw = {k: v for k, v in raw.items() if v is not None}
    with pytest.raises(ManifestError, match=message):
        parse_manifest(raw)


def test_missing_manifest_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"no ferry\.yaml"):
        load_bundle(tmp_path)


def test_repository_orders_versions_naturally(tmp_path: Path) -> None:
    for version in ["2", "10", "1"]:
        ferry.build(_classifier(), "clf", tmp_path, version=version)
    assert [r.version for r in scan_repository(tmp_path)["clf"]] == ["1", "2", "10"]
    assert version_key("1.10") > version_key("1.2")


def test_python_class_bundle(tmp_path: Path) -> None:
    source = tmp_path / "doubler.py"
    source.write_text(
        "import numpy as np\n"
        "class Doubler:\n"
        "    def load(self):\n        self.factor = 2.0\n"
        "    def predict(self, batch):\n        return np.asarray(batch) * self.factor\n"
    )
    import importlib.util

    spec = importlib.util.spec_from_file_location("doubler", source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    path = ferry.build(
        module.Doubler,
        "double",
        tmp_path / "repo",
        input_schema={"kind": "tensor", "tensors": [{"name": "x", "shape": [-1, -1]}]},
    )
    manifest = read_manifest(path)
    assert manifest.runtime == "python" and manifest.options["entrypoint"] == "doubler.py:Doubler"
    assert load_bundle(path, trust_code=True).runtime.predict(np.array([[1.0, 2.5]])).values == [[2.0, 5.0]]


def test_onnx_bundle_matches_numpy(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    weights = np.array([[1.0], [-2.0], [0.5]], dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])],
        [numpy_helper.from_array(weights, "w")],
    )
    model_file = tmp_path / "linear.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(model_file))
    path = ferry.build(model_file, "linear", tmp_path / "repo")
    manifest = read_manifest(path)
    assert manifest.runtime == "onnx"
    assert manifest.input.tensors[0].shape == [-1, 3]
    x = np.array([[1.0, 1.0, 1.0], [2.0, 0.0, 4.0]], dtype=np.float32)
    np.testing.assert_allclose(load_bundle(path).runtime.predict(x).values, (x @ weights)[:, 0])


def test_reviews_model_ranks_unseen_positive_reviews_above_negative(example_repo: Path) -> None:
    from importlib import resources

    loaded = load_bundle(example_repo / "reviews" / "1")
    text = resources.files("ferry.examples").joinpath("data", "reviews_heldout.jsonl").read_text(encoding="utf-8")
    heldout = [json.loads(line) for line in text.splitlines() if line.strip()]
    texts = [r["text"] for r in heldout]
    scores = np.clip(loaded.runtime.predict(texts).values, 1, 5)
    positive = [s for s, r in zip(scores, heldout, strict=True) if r["stars"] >= 4]
    negative = [s for s, r in zip(scores, heldout, strict=True) if r["stars"] <= 2]
    assert positive and negative
    pairs = [p > n for p in positive for n in negative]
    assert sum(pairs) / len(pairs) >= 0.9
    assert np.mean(positive) - np.mean(negative) >= 1.5


def test_iris_example_reports_its_measured_accuracy(example_repo: Path) -> None:
    manifest = read_manifest(example_repo / "iris" / "1")
    assert manifest.metadata["metrics"]["accuracy"] == pytest.approx(0.8889, abs=1e-4)
    assert manifest.labels == ["setosa", "versicolor", "virginica"]
    assert set(manifest.metadata["training_stats"]["features"]) == {"length", "width"}  # for drift monitoring


def test_a_version_another_build_writes_meanwhile_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two builds of one name at once: the one that finishes second finds the version written, and says so (it
    was an OSError: Directory not empty); the first one's bundle stands, and nothing is left half-written."""
    import ferry.builder

    model = LogisticRegression().fit(np.array([[0.0], [1.0], [2.0], [3.0]]), [0, 0, 1, 1])
    checked = ferry.builder._check_sample

    def the_other_build_finishes_first(staging: Path, *args: object) -> None:
        checked(staging, *args)  # type: ignore[arg-type]
        (tmp_path / "m" / "1").mkdir(parents=True)
        (tmp_path / "m" / "1" / "ferry.yaml").write_text("the other build's bundle")

    monkeypatch.setattr(ferry.builder, "_check_sample", the_other_build_finishes_first)
    with pytest.raises(ManifestError, match=r"was written by another build at the same time"):
        ferry.build(model, "m", tmp_path, version="1", features=["x"])
    assert (tmp_path / "m" / "1" / "ferry.yaml").read_text() == "the other build's bundle"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".m-")]  # the staging folder is gone
