"""Issue 21: the Python class contract, as the README writes it, through ``ferry build`` and ``ferry serve``.

What ``predict`` receives (a 2-D array by default, records or a DataFrame when the class says so with
``input_format``), what it may return (one value per row: a list, an array, a pandas Series), and where a class
finds its files (next to its ``__file__``: the build warns for a relative path it opens).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from tests.inprocess import InProcessServer, inprocess_fixture  # noqa: F401 (the fixture)
from tests.manual import manual_text, marked_blocks
from tests.test_byom import ferry, one_line_error

TAG = "<!-- tested: tests/test_class_contract.py::test_the_readme_records_class -->"
FEATURES = "pclass:int,embarked:string,age:float,alone:bool"
ROWS = [
    {"pclass": 1, "embarked": "S", "age": 29.5, "alone": True},
    {"pclass": 2, "embarked": "C", "age": 3, "alone": False},  # 3 for a float feature, as clients send it
]

PROBES = """
import numpy as np


def kinds(values):
    return "/".join(type(v).__name__ for v in values)


class Arrays:
    def predict(self, batch):
        return [f"{type(batch).__name__} {batch.dtype} {kinds(row)}" for row in batch]


class Records:
    input_format = "records"

    def predict(self, rows):
        return np.array([" ".join(f"{k}={type(v).__name__}" for k, v in row.items()) for row in rows])


class Frame:
    input_format = "frame"

    def predict(self, frame):
        import pandas as pd

        described = " ".join(f"{c}={frame[c].dtype}" for c in frame.columns)
        return pd.Series([f"{type(frame).__name__} {described}"] * len(frame))


class Short:
    def predict(self, batch):
        return ["one answer"]
"""


def build(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return ferry("build", *args, "--repo", str(folder / "models"), cwd=folder)


def test_the_readme_records_class(tmp_path: Path, inprocess: Callable[..., InProcessServer]) -> None:
    python, bash = marked_blocks(TAG)  # on whichever page of the manual (tests/manual.py) holds them
    (tmp_path / "fares.py").write_text(python.text)
    done = subprocess.run(["bash", "-e", "-c", bash.text], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stderr
    client = inprocess(tmp_path / "models").client
    row = {"pclass": 2, "embarked": "C", "age": 3}
    assert client.post("/models/fares/predict", json=[row]).json() == {"predictions": [61.5]}
    assert "61.5" in bash.text  # the answer the README shows
    v2 = {
        "inputs": [
            {"name": "pclass", "datatype": "INT64", "shape": [1], "data": [2]},
            {"name": "embarked", "datatype": "BYTES", "shape": [1], "data": ["C"]},
            {"name": "age", "datatype": "FP64", "shape": [1], "data": [3.0]},
        ]
    }
    assert client.post("/v2/models/fares/infer", json=v2).json()["outputs"][0]["data"] == [61.5]


@pytest.fixture(scope="module")
def probes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessServer]:
    folder = tmp_path_factory.mktemp("probes")
    (folder / "probes.py").write_text(PROBES)
    for cls in ("Arrays", "Records", "Frame", "Short"):
        done = build(folder, f"probes.py:{cls}", "--name", cls.lower(), "--features", FEATURES)
        assert done.returncode == 0, done.stderr
    done = build(folder, "probes.py:Records", "--name", "numbers", "--features", "pclass:int,age:float?")
    assert done.returncode == 0, done.stderr
    server = InProcessServer(folder / "models")  # ferry serve's composition, in process (tests/inprocess.py)
    yield server
    server.stop()


def _answers(server: InProcessServer, model: str, rows: list[dict[str, object]]) -> list[str]:
    response = server.client.post(f"/models/{model}/predict", json=rows)
    assert response.status_code == 200, response.text
    answers: list[str] = response.json()["predictions"]
    return answers


def test_predict_receives_what_input_format_says(probes: InProcessServer) -> None:
    arrays = ["ndarray object int/str/float/bool", "ndarray object int/str/int/bool"]
    assert _answers(probes, "arrays", ROWS) == arrays
    records = "pclass=int embarked=str age=float alone=bool"
    assert _answers(probes, "records", ROWS) == [records, records]
    frame = "DataFrame pclass=int64 embarked=object age=float64 alone=bool"
    assert _answers(probes, "frame", ROWS) == [frame, frame]
    # all numbers: the protocols hand over a float64 array; records still give each feature's type
    numbers = [{"pclass": 3, "age": 1.5}, {"pclass": 1, "age": None}]  # a missing value: None, not NaN
    assert _answers(probes, "numbers", numbers) == ["pclass=int age=float", "pclass=int age=NoneType"]


def test_predict_returns_one_value_per_row(probes: InProcessServer) -> None:
    assert _answers(probes, "short", ROWS[:1]) == ["one answer"]
    response = probes.client.post("/models/short/predict", json=ROWS)
    assert response.status_code == 500
    assert response.json()["error"] == "predict returned 1 values for 2 rows; it must return one per row"


def test_records_and_frames_need_named_features(tmp_path: Path) -> None:
    (tmp_path / "probes.py").write_text(PROBES)
    line = one_line_error(build(tmp_path, "probes.py:Records", "--name", "records"))
    assert "Records.input_format is 'records', which needs named features: build with --features" in line
    (tmp_path / "odd.py").write_text(
        "class Odd:\n    input_format = 'rows'\n    def predict(self, x):\n        return x\n"
    )
    line = one_line_error(build(tmp_path, "odd.py:Odd", "--name", "odd"))
    assert "Odd.input_format is 'rows'; expected one of 'array', 'records', 'frame'" in line


OPENS_RELATIVE = """import csv

import joblib


class Fares:
    def load(self):
        self.base = dict(csv.reader(open("fares.csv")))
        self.model = joblib.load("model.joblib")
        self.ok = __import__("pathlib").Path(__file__).parent / "model.joblib"

    def predict(self, rows):
        return [0.0] * len(rows)
"""


def test_a_relative_path_the_class_opens_is_a_warning_at_build(tmp_path: Path) -> None:
    """The README's warning, as printed; a file the bundle holds is named as held, one it lacks as to include."""
    (tmp_path / "fares.py").write_text(OPENS_RELATIVE)
    (tmp_path / "fares.csv").write_text("S,20\n")
    joblib.dump({"S": 20.0}, tmp_path / "model.joblib")
    done = build(tmp_path, "fares.py:Fares", "--name", "fares", "--features", "a", "--include", "model.joblib")
    assert done.returncode == 0, done.stderr  # it works here, run from the class's own folder
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning: ")]
    printed = re.search(r"`(warning: fares\.py:\d+ opens 'fares\.csv'.*?)`", manual_text())
    assert printed is not None
    assert warnings == [
        printed.group(1).replace("fares.py:5", "fares.py:8"),
        "warning: fares.py:9 opens 'model.joblib' relative to the working directory, which is not the bundle's "
        "folder when served (a container's never is); the bundle holds it; open it as "
        "Path(__file__).parent / 'model.joblib'",
    ]
    assert "fares.py:5" in printed.group(1)


class Columns:
    """A class of the user's, given in Python, whose bundle says its input is a frame."""

    def predict(self, frame: Any) -> list[str]:
        return [f"{type(frame).__name__} {frame['sex'].dtype} {frame['age'].dtype}"] * len(frame)


def test_a_bundle_whose_input_is_a_frame_hands_a_class_a_dataframe(tmp_path: Path) -> None:
    import ferry
    from ferry.runtimes.load import load_bundle

    schema = {"kind": "features", "frame": True, "features": [{"name": "sex", "dtype": "string"}, {"name": "age"}]}
    built = ferry.build(Columns, "columns", tmp_path, input_schema=schema, sample_input={"sex": "female", "age": 3.0})
    runtime = load_bundle(built, trust_code=True).runtime
    assert runtime.predict(np.array([["female", 3.0]], dtype=object)).values == ["DataFrame object float64"]
