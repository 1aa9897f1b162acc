"""Issue 21: ``ferry loadtest`` and ``ferry check`` send valid requests to a model over typed columns.

A scikit-learn Pipeline over text, integer, boolean and float columns (a ColumnTransformer with a OneHotEncoder
that refuses unknown values, and a StandardScaler), and a LightGBM model over a pandas categorical, each saved
with joblib and built with ``ferry build``, are served by ``ferry serve``. Generated requests carry each column
in its own type (one v2/gRPC input per column, BYTES for text, a categorical's values from its categories), so
every protocol answers 200 to all of them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
import yaml
from tests.conftest import ServerProcess, free_port
from tests.test_byom import ferry
from tests.test_loadtest_fakeserver import FakeServer, fake_server
from tests.test_tabular import lightgbm_categorical

pd = pytest.importorskip("pandas")
__all__ = ["fake_server"]  # the fixture, re-exported for pytest


def mixed_pipeline() -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    rng = np.random.default_rng(0)
    n = 300
    frame = pd.DataFrame(
        {
            "sex": rng.choice(["male", "female"], n),
            "pclass": rng.integers(1, 4, n),
            "alone": rng.random(n) < 0.5,
            "age": rng.normal(30, 10, n).round(1),
            "embarked": rng.choice(["C", "Q", "S"], n),
        }
    )
    survived = ((frame.sex == "female") | frame.alone).astype(int)
    columns = ColumnTransformer(
        [
            # handle_unknown="error" (the default): a value the encoder never saw is refused, so only valid ones pass
            ("codes", OneHotEncoder(), ["sex", "embarked", "pclass", "alone"]),
            ("numbers", StandardScaler(), ["age"]),
        ]
    )
    return Pipeline([("columns", columns), ("model", LogisticRegression())]).fit(frame, survived)


def decks() -> Any:
    """LightGBM over a pandas categorical whose categories are text made of digits ("1", "2", "3")."""
    import lightgbm

    rng = np.random.default_rng(2)
    frame = pd.DataFrame({"deck": pd.Categorical(rng.choice(["1", "2", "3"], 300)), "fare": rng.normal(30, 10, 300)})
    fancy = ((frame.deck == "1") | (frame.fare > 35)).astype(int)
    return lightgbm.LGBMClassifier(n_estimators=10, min_child_samples=5, verbose=-1).fit(frame, fancy)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("loadtest-tabular")
    repo = folder / "models"
    joblib.dump(mixed_pipeline(), folder / "mixed.joblib")
    joblib.dump(lightgbm_categorical()[0], folder / "ports.joblib")
    joblib.dump(decks(), folder / "decks.joblib")
    for name in ("mixed", "ports", "decks"):
        built = ferry("build", str(folder / f"{name}.joblib"), "--name", name, "--repo", str(repo), "--trusted")
        assert built.returncode == 0, built.stderr
    features = yaml.safe_load((repo / "mixed" / "1" / "ferry.yaml").read_text())["input"]["features"]
    assert [f.get("dtype", "float64") for f in features] == ["string", "int64", "bool", "float64", "string"]
    port = free_port()
    process = ServerProcess([str(repo), "--grpc-port", str(port)])
    process.grpc_port = port
    yield process
    process.stop()


@pytest.mark.parametrize("model", ["mixed", "ports"])
@pytest.mark.parametrize("protocol", ["native", "v2", "v1", "seldon", "grpc"])
def test_loadtest_generates_valid_requests_for_typed_columns(
    server: ServerProcess, tmp_path: Path, model: str, protocol: str
) -> None:
    report = tmp_path / "report.json"
    args = ["loadtest", server.url, "--model", model, "--protocol", protocol, "--data", "generated"]
    args += ["--concurrency", "2", "--duration", "1s", "--json", str(report)]
    if protocol == "grpc":
        args += ["--grpc-target", f"127.0.0.1:{server.grpc_port}"]
    result = ferry(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    figures = json.loads(report.read_text())
    assert figures["distinct_bodies"] > 1 and figures["sent"] > 0
    assert figures["status_counts"] == {"200": figures["sent"]}, figures["errors"]
    assert figures["error_rate"] == 0.0


@pytest.mark.parametrize("model", ["mixed", "ports"])
@pytest.mark.parametrize("protocol", ["native", "v2", "v1", "seldon"])
def test_check_passes_every_case_on_typed_columns(
    server: ServerProcess, tmp_path: Path, model: str, protocol: str
) -> None:
    """Valid inputs of every column type answer 200 with an output that fits; a classifier's Seldon answer (its
    probabilities, named by class) is checked as probabilities; mistakes still get a 4xx."""
    report = tmp_path / "check.json"
    result = ferry("check", server.url, "--model", model, "--protocol", protocol, "--json", str(report))
    cases = json.loads(report.read_text())["results"]
    failed = [(c["name"], c["detail"]) for c in cases if not c["passed"]]
    assert result.returncode == 0 and not failed, failed
    names = [c["name"] for c in cases]
    assert "the model's sample input" in names and sum(c["expect"] == "200" for c in cases) == 6


@pytest.mark.parametrize("protocol", ["native", "v2"])
def test_loadtest_reads_a_csv_cell_as_its_column_type(server: ServerProcess, tmp_path: Path, protocol: str) -> None:
    """A categorical's cell "1" stays the text "1" when its categories are text, not the number 1.0."""
    data = tmp_path / "decks.csv"
    data.write_text("deck,fare\n1,20.5\n3,41\n2,30\n")
    report = tmp_path / "report.json"
    args = ["loadtest", server.url, "--model", "decks", "--protocol", protocol, "--data", str(data)]
    result = ferry(*args, "--concurrency", "1", "--duration", "1s", "--json", str(report))
    assert result.returncode == 0, result.stdout + result.stderr
    figures = json.loads(report.read_text())
    assert figures["distinct_bodies"] == 3 and figures["status_counts"] == {"200": figures["sent"]}, figures["errors"]


def test_loadtest_speaks_to_a_v2_server_of_columns(fake_server: FakeServer, tmp_path: Path) -> None:
    """A plain OIP v2 server (no Ferry metadata) whose model takes one [n, 1] input per column: each gets its own
    datatype, and shape [1, 1], on REST; the v2 metadata is the whole schema."""
    report = tmp_path / "report.json"
    args = ["loadtest", fake_server.url, "--model", "columns", "--protocol", "v2", "--data", "generated"]
    result = ferry(*args, "--concurrency", "1", "--duration", "1s", "--json", str(report))
    assert result.returncode == 0, result.stdout + result.stderr
    figures = json.loads(report.read_text())
    assert figures["sent"] > 0 and figures["status_counts"] == {"200": figures["sent"]}, figures["errors"]
