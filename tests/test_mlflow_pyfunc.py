"""MLflow ``python_function`` models (issue 26): a folder written by ``mlflow.pyfunc.save_model`` is Python code.

Refused without the operator's trust in code (``ferry build --trusted``, ``ferry serve --trust-code``), naming the
flag, with nothing of it run: the model writes a marker file as it loads and predicts. With the flag it serves, and
its answers equal the model's own ``predict`` through mlflow, on the native route and MLflow's ``/invocations``.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import ServerProcess, run_ferry

pytest.importorskip("mlflow.pyfunc", reason="mlflow is a test extra")

# Run as a script, as a user would: the class lives in __main__, so cloudpickle keeps it by value.
SAVE = """
import mlflow.pyfunc
import pandas as pd
from mlflow.models import infer_signature


class Scorer(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        with open({marker!r}, "a") as file:
            file.write("loaded\\n")
        self.bonus = {{"x": 0.5, "y": -2.0}}

    def predict(self, context, model_input, params=None):
        with open({marker!r}, "a") as file:
            file.write("predicted\\n")
        text = model_input["c"].map(lambda v: self.bonus.get(v, 0.0))
        return model_input["a"] * model_input["b"] + text


rows = pd.DataFrame({{"a": [1.5, -2.0], "b": [3, 4], "c": ["x", "z"]}})
model = Scorer()
model.load_context(None)
signature = infer_signature(rows, model.predict(None, rows))
mlflow.pyfunc.save_model({folder!r}, python_model=Scorer(), signature=signature, pip_requirements=["pandas"])
"""
ROWS = [
    {"a": 0.25, "b": 7, "c": "x"},
    {"a": -3.0, "b": 2, "c": "y"},
    {"a": 10.0, "b": -1, "c": "q"},
]


@pytest.fixture(scope="module")
def pyfunc(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The MLflow folder ``scorer`` and its marker file, emptied once the folder is written."""
    root = tmp_path_factory.mktemp("pyfunc")
    folder, marker = root / "scorer", root / "marker.txt"
    script = root / "save.py"
    script.write_text(SAVE.format(marker=str(marker), folder=str(folder)))
    subprocess.run([sys.executable, str(script)], check=True, capture_output=True, cwd=root, timeout=120)
    assert "python_model: python_model.pkl" in (folder / "MLmodel").read_text()
    marker.unlink()  # saving ran the model; from here on only Ferry may
    return folder, marker


def test_a_pyfunc_folder_is_refused_without_the_code_flag_and_nothing_runs(
    pyfunc: tuple[Path, Path], tmp_path: Path, serve: Callable[..., ServerProcess]
) -> None:
    folder, marker = pyfunc
    built = run_ferry("build", str(folder), "--repo", str(tmp_path / "repo"))
    assert built.returncode != 0
    assert "an MLflow python_function model (python_model python_model.pkl, a cloudpickle) is Python code" in (
        built.stderr + built.stdout
    )
    assert "pass --trusted only if you trust where it came from" in built.stderr + built.stdout
    assert not (tmp_path / "repo" / "scorer").exists()
    # --trust-pickle is not enough: a pyfunc model is code. The model is FAILED with the reason; the server runs.
    server = serve(str(folder), "--trust-pickle", env={"FERRY_TRUST_CODE": "0"}, wait_ready=False)
    server.wait(ready=False)
    (version,) = httpx.get(server.url + "/models").json()["models"][0]["versions"]
    assert version["state"] == "FAILED"
    assert version["error"].endswith("pass --trust-code only if you trust where it came from"), version
    assert httpx.post(server.url + "/models/scorer/predict", json=ROWS).status_code == 503
    assert not marker.exists(), marker.read_text()


def _mlflow_predict(folder: Path) -> list[float]:
    import mlflow.pyfunc
    import pandas as pd

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        answer = mlflow.pyfunc.load_model(str(folder)).predict(pd.DataFrame(ROWS))
    return [float(v) for v in answer]


@pytest.mark.parametrize("how", ["serve", "build"])
def test_a_pyfunc_folder_serves_with_the_flag_answering_as_its_own_predict(
    pyfunc: tuple[Path, Path], tmp_path: Path, serve: Callable[..., ServerProcess], how: str
) -> None:
    folder, marker = pyfunc
    if how == "build":
        built = run_ferry("build", str(folder), "--repo", str(tmp_path / "repo"), "--trusted")
        assert built.returncode == 0, built.stderr
        server = serve(str(tmp_path / "repo"), "--trust-code")
    else:
        server = serve(str(folder), "--trust-code")
    assert "loaded" in marker.read_text()
    expected = _mlflow_predict(folder)
    assert expected == [0.25 * 7 + 0.5, -3.0 * 2 - 2.0, -10.0]
    native = httpx.post(server.url + "/models/scorer/predict", json=ROWS)
    assert native.status_code == 200, native.text
    assert native.json() == {"predictions": expected}
    split = {"dataframe_split": {"columns": ["a", "b", "c"], "data": [list(r.values()) for r in ROWS]}}
    for body in (split, {"dataframe_records": ROWS}):
        answer: Any = httpx.post(server.url + "/invocations", json=body)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"predictions": expected}
