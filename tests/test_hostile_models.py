"""One loading policy on every path: the same hostile model files (tests/hostile_files.py) go through every entry
point that reads a model, as real processes on real files. Without the operator's flag nothing in them runs, and
the refusal is one line naming what would have run and the flag that would allow it (``ferry.bundle.trust``)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from tests.conftest import models_when_loaded

import ferry
from hostile_files import HOSTILE_MODELS, mlflow_folder, mlserver_repository, plant_artifact

UNTRUSTING = {"FERRY_TRUST_PICKLE": "0", "FERRY_TRUST_CODE": "0", "FERRY_GRPC_PORT": "0", "FERRY_PROBE_PORT": "0"}


def ferry_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ferry", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **UNTRUSTING, "COLUMNS": "200"},
        timeout=120,
        check=False,
    )


def disguised(hostile: str) -> str:
    """A name that lies about the content: the policy goes by what a file holds."""
    return "model.joblib" if hostile.startswith("skops") else "model.skops"


def _build_file(tmp: Path, model: bytes, hostile: str) -> list[str]:
    path = tmp / disguised(hostile)
    path.write_bytes(model)
    return ["build", str(path), "--name", "evil", "--repo", str(tmp / "repo"), "--features", "x,y"]


def _build_pipeline(tmp: Path, model: bytes, hostile: str) -> list[str]:
    import skops.io as sio

    scaler = tmp / "scaler.skops"
    scaler.write_bytes(sio.dumps(StandardScaler().fit(np.eye(2))))
    return [*_build_file(tmp, model, hostile)[:1], str(scaler), *_build_file(tmp, model, hostile)[1:]]


def _build_mlflow(tmp: Path, model: bytes, hostile: str) -> list[str]:
    folder = mlflow_folder(tmp / "mlflow-model", model, disguised(hostile))
    return ["build", str(folder), "--name", "evil", "--repo", str(tmp / "repo")]


def _build_mlserver(tmp: Path, model: bytes, hostile: str) -> list[str]:
    return ["build", str(mlserver_repository(tmp / "mlserver", model, disguised(hostile))), "--repo", str(tmp / "repo")]


# entry point -> (its command line for a hostile file, the flag that would allow the file)
ENTRY_POINTS: dict[str, tuple[Callable[[Path, bytes, str], list[str]], str]] = {
    "build-file": (_build_file, "--trusted"),
    "build-pipeline": (_build_pipeline, "--trusted"),
    "build-mlflow-folder": (_build_mlflow, "--trusted"),
    "build-mlserver-repository": (_build_mlserver, "--trusted"),
}


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("hostile", HOSTILE_MODELS)
def test_a_hostile_model_file_runs_nothing_through_the_command_line(tmp_path: Path, entry: str, hostile: str) -> None:
    marker = tmp_path / "marker"
    model = HOSTILE_MODELS[hostile](marker)
    command, flag = ENTRY_POINTS[entry]
    result = ferry_cli(*command(tmp_path, model.data, hostile))
    assert not marker.exists(), "the hostile file ran"
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1, line
    assert model.calls in line and flag in line, line
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").rglob("ferry.yaml"))


@pytest.mark.parametrize("hostile", HOSTILE_MODELS)
def test_the_hostile_files_do_run_once_the_operator_trusts_them(tmp_path: Path, hostile: str) -> None:
    """The control: the flag the refusals name really is what stands between the file and its code."""
    marker = tmp_path / "marker"
    model = HOSTILE_MODELS[hostile](marker)
    ferry_cli(*_build_file(tmp_path, model.data, hostile), "--trusted")  # what it returns is no model: refused then
    assert marker.exists()


def _hostile_repository(tmp_path: Path, marker: Path) -> tuple[Path, dict[str, str]]:
    """A repository of one real bundle per hostile file, its model file swapped for the hostile one."""
    repo = tmp_path / "repo"
    classifier = LogisticRegression().fit(np.array([[0.0, 0.0], [0.1, 0.2], [1.0, 1.0], [0.9, 1.1]]), [0, 0, 1, 1])
    calls = {}
    for i, hostile in enumerate(HOSTILE_MODELS):
        bundle = ferry.build(classifier, f"evil{i}", repo, compile=False)
        model = HOSTILE_MODELS[hostile](marker)
        plant_artifact(bundle, disguised(hostile), model.data)
        calls[f"evil{i}"] = model.calls
    return repo, calls


def test_ferry_verify_refuses_every_hostile_model_naming_the_flag(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    repo, calls = _hostile_repository(tmp_path, marker)
    result = ferry_cli("verify", str(repo))
    assert not marker.exists(), "the hostile file ran"
    assert result.returncode == 0, result.stderr  # reported as needing the operator's flag, as any pickle is
    needs = [line.split() for line in result.stderr.splitlines() if line.startswith("needs ")]
    reported = {words[2].split(":")[0]: (words[1], " ".join(words)) for words in needs}
    assert set(reported) == set(calls), result.stderr
    for name, call in calls.items():
        flag, line = reported[name]
        assert flag == "--trust-pickle" and call in line and "--trust-pickle only if" in line, line


@pytest.mark.parametrize("source", ["repository", "model-uri"])
def test_ferry_serve_leaves_every_hostile_model_failed_naming_the_flag(tmp_path: Path, serve: Any, source: str) -> None:
    """``ferry serve REPO``, and ``ferry serve --model-uri`` (the bundles fetched, then loaded)."""
    marker = tmp_path / "marker"
    repo, calls = _hostile_repository(tmp_path, marker)
    args = [str(repo)] if source == "repository" else [str(tmp_path / "fetched"), "--model-uri", str(repo)]
    server = serve(*args, wait_ready=False, env=UNTRUSTING)
    models = models_when_loaded(server.url)
    assert not marker.exists(), "the hostile file ran"
    for name, call in calls.items():
        assert models[name]["state"] == "FAILED", models[name]
        assert call in models[name]["error"] and "--trust-pickle" in models[name]["error"], models[name]


@pytest.mark.parametrize("hostile", HOSTILE_MODELS)
def test_ferry_serve_of_an_mlserver_repository_leaves_the_hostile_model_failed(
    tmp_path: Path, serve: Any, hostile: str
) -> None:
    """Served as it is, an MLServer repository's model that only unpickling could read is FAILED with the reason
    (what would run, and the flag), and nothing in it runs; the server itself starts, as for any failed bundle."""
    marker = tmp_path / "marker"
    model = HOSTILE_MODELS[hostile](marker)
    repository = mlserver_repository(tmp_path / "mlserver", model.data, disguised(hostile))
    server = serve(str(repository), wait_ready=False, env=UNTRUSTING)
    models = models_when_loaded(server.url)
    assert not marker.exists(), "the hostile file ran"
    (entry,) = models.values()
    assert entry["state"] == "FAILED" and model.calls in entry["error"] and "--trust-pickle" in entry["error"], entry
