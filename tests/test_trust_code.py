"""Importing a bundle's Python class runs its code, so only the operator's ``--trust-code`` allows it.

The class here writes a marker file when its module is imported, as an attacker's code would run
theirs: without the flag the marker never appears, the bundle is FAILED naming the flag, and the
other models serve; with it the class is imported and serves. The bundle's own ``trusted: true``
(which ``ferry build`` writes for a class) changes nothing.
"""

from __future__ import annotations

import importlib.util
import shutil
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

import ferry
from ferry.bundle import read_manifest
from ferry.cli.entry import plain_serve_settings
from ferry.errors import UntrustedCode
from ferry.runtimes.load import load_bundle
from ferry.settings import Settings

MARKED_CLASS = """
    import os
    import pathlib

    if os.environ.get("FERRY_TEST_IMPORT_MARKER"):  # set only for the server under test
        pathlib.Path(os.environ["FERRY_TEST_IMPORT_MARKER"]).write_text("imported")


    class Marked:
        def predict(self, X):
            return [sum(row) for row in X]
"""


@pytest.fixture(scope="module")
def marked_repo(tmp_path_factory: pytest.TempPathFactory, example_repo: Path) -> Path:
    """iris, and ``marked``: a class bundle whose module writes a marker when imported."""
    folder = tmp_path_factory.mktemp("marked-src")
    source = folder / "marked.py"
    source.write_text(textwrap.dedent(MARKED_CLASS))
    spec = importlib.util.spec_from_file_location("marked", source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    repo = tmp_path_factory.mktemp("marked-repo")
    tensor = {"kind": "tensor", "tensors": [{"name": "x", "shape": [-1, -1]}]}
    ferry.build(module.Marked, "marked", repo, version="1", input_schema=tensor, sample_input=[[1.0, 2.0]])
    shutil.copytree(example_repo / "iris", repo / "iris")
    return repo


def _ready_when_loaded(url: str, timeout: float = 60.0) -> httpx.Response:
    """``/ready`` once no model is still loading."""
    deadline = time.monotonic() + timeout
    while True:
        response = httpx.get(url + "/ready", timeout=5.0)
        if all(m["state"] != "LOADING" for m in response.json()["models"]) or time.monotonic() > deadline:
            return response
        time.sleep(0.1)


def _iris_predicts(url: str) -> None:
    row = {"length": 1.4, "width": 0.2}
    response = httpx.post(url + "/models/iris/predict", json={"instances": [row]}, timeout=10.0)
    assert response.status_code == 200, response.text


def test_a_server_without_trust_code_never_imports_a_class(serve: Any, marked_repo: Path, tmp_path: Path) -> None:
    assert read_manifest(marked_repo / "marked" / "1").trusted  # the bundle vouches for itself, to no effect
    marker = tmp_path / "imported"
    env = {"FERRY_TRUST_CODE": "0", "FERRY_TEST_IMPORT_MARKER": str(marker)}
    server = serve(str(marked_repo), "--trust-pickle", env=env, wait_ready=False)  # pickle trust is not code trust
    ready = _ready_when_loaded(server.url)
    assert ready.status_code == 503
    states = {m["name"]: m for m in ready.json()["models"]}
    assert states["iris"]["state"] == "READY"
    assert states["marked"]["state"] == "FAILED"
    assert "marked:1" in states["marked"]["error"] and "--trust-code" in states["marked"]["error"]
    assert "/" not in states["marked"]["error"].split("(")[0]  # no server path in the error
    _iris_predicts(server.url)  # the other model is unaffected
    refused = httpx.post(server.url + "/models/marked/predict", json={"instances": [[1.0, 2.0]]}, timeout=10.0)
    assert refused.status_code == 503, refused.text
    assert not marker.exists(), "the class's module was imported without --trust-code"


def test_trust_code_imports_and_serves_the_class(serve: Any, marked_repo: Path, tmp_path: Path) -> None:
    marker = tmp_path / "imported"
    env = {"FERRY_TRUST_CODE": "0", "FERRY_TEST_IMPORT_MARKER": str(marker)}
    server = serve(str(marked_repo), "--trust-code", env=env)  # the operator's flag, over the variable
    assert marker.read_text() == "imported"
    answer = httpx.post(server.url + "/models/marked/predict", json={"instances": [[1.0, 2.0]]}, timeout=10.0)
    assert answer.status_code == 200 and answer.json()["predictions"] == [3.0], answer.text
    _iris_predicts(server.url)


def test_trust_code_is_off_by_default_and_parsed_on_both_start_paths(marked_repo: Path) -> None:
    assert Settings().trust_code is False
    plain = plain_serve_settings(["serve", str(marked_repo), "--trust-code"])
    assert plain is not None and plain.trust_code
    from typer.testing import CliRunner

    from ferry.cli.main import app

    help_text = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"}).output
    assert "--trust-code" in help_text and "FERRY_TRUST_CODE" in help_text


def test_load_bundle_needs_trust_code_for_a_class_and_trust_code_allows_pickles(
    marked_repo: Path, tmp_path: Path
) -> None:
    bundle = marked_repo / "marked" / "1"
    for trust in ({}, {"trust_pickle": True}):  # --trust-pickle lets pickles load, never a class's import
        with pytest.raises(UntrustedCode, match=r"marked:1: its Python class \(marked.py:Marked\) is code"):
            load_bundle(bundle, **trust)
    assert load_bundle(bundle, trust_code=True).runtime.predict([[1.0, 2.0]]).values == [3.0]
    # --trust-code trusts the bundle's code in every form, pickles included: one rule to remember.
    model_file = tmp_path / "model.joblib"
    joblib.dump(LogisticRegression().fit(np.array([[0.0], [1.0]]), [0, 1]), model_file)
    pickled = ferry.build(model_file, "pkl", tmp_path / "repo", trusted=True)
    assert load_bundle(pickled, original=True, trust_code=True).runtime.predict(np.array([[1.0]])).values == [
        1
    ]  # its own integer class


def test_verify_reports_a_class_that_needs_trust_code(marked_repo: Path) -> None:
    from typer.testing import CliRunner

    from ferry.cli.main import app

    result = CliRunner().invoke(app, ["verify", str(marked_repo)], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert "needs --trust-code marked:1" in result.output and "ok iris:1" in result.output
    trusted = CliRunner().invoke(app, ["verify", str(marked_repo), "--trust-code"], env={"COLUMNS": "300"})
    assert trusted.exit_code == 0 and "ok marked:1" in trusted.output, trusted.output


@pytest.mark.parametrize("trust", [False, True])
def test_containerize_compose_and_k8s_carry_the_operators_trust_code(
    trust: bool, marked_repo: Path, tmp_path: Path
) -> None:
    """What the operator asked for at containerize/k8s/compose time is what the image and pods run with."""
    import yaml
    from typer.testing import CliRunner

    from ferry.cli.main import app

    flag = ["--trust-code"] if trust else []
    runner = CliRunner()
    built = runner.invoke(app, ["containerize", str(marked_repo), "-t", "m:1", "-o", str(tmp_path / "ctx"), *flag])
    assert built.exit_code == 0, built.output
    dockerfile = (tmp_path / "ctx" / "Dockerfile").read_text()
    assert ("FERRY_TRUST_CODE=true" in dockerfile) is trust
    assert ('RUN ["ferry", "verify", "/models", "--trust-code"]' in dockerfile) is trust, dockerfile
    k8s = runner.invoke(app, ["k8s", str(marked_repo), "--image", "m:1", "-o", str(tmp_path / "k8s"), *flag])
    assert k8s.exit_code == 0, k8s.output
    config = yaml.safe_load((tmp_path / "k8s" / "10-configmap.yaml").read_text())["data"]
    assert config.get("FERRY_TRUST_CODE") == ("true" if trust else None)
    compose = runner.invoke(app, ["compose", str(marked_repo), "--image", "m:1", "-o", str(tmp_path / "c"), *flag])
    assert compose.exit_code == 0, compose.output
    services = yaml.safe_load((tmp_path / "c" / "docker-compose.yml").read_text())["services"]
    environments = [s.get("environment", {}) for s in services.values() if "nginx" not in str(s.get("image"))]
    assert environments and all(env.get("FERRY_TRUST_CODE") == ("true" if trust else None) for env in environments)


def test_demo_trusts_the_code_of_ferrys_own_examples(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``ferry demo`` serves the examples it built itself, `score` class included, so it passes --trust-code."""
    from typer.testing import CliRunner

    import ferry.cli.main as cli
    import ferry.examples

    served: list[Settings] = []
    monkeypatch.setattr(ferry.examples, "build_examples", lambda repo, names=None: [])
    monkeypatch.setattr(cli, "_serve", served.append)
    result = CliRunner().invoke(cli.app, ["demo", "--cache", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert [s.trust_code for s in served] == [True] and not served[0].trust_pickle


def test_an_mlserver_repository_follows_the_same_rule(tmp_path: Path) -> None:
    """Its pickles convert with --trust-pickle or --trust-code, never without the operator's trust: without it the
    model is kept as a version that fails with the reason (FAILED when served), and the LightGBM model converts."""
    from tests.test_byom import write_mlserver_repository

    from ferry.cli.serve import serve_layout
    from ferry.errors import ManifestError

    source = write_mlserver_repository(tmp_path / "mlserver")
    untrusted = serve_layout(Settings(repo=source))
    with pytest.raises(ManifestError, match=r"is a pickle.*--trust-pickle"):
        load_bundle(next(untrusted.repo.glob("iris/*")), trust_pickle=True)
    assert load_bundle(next(untrusted.repo.glob("petals/*"))).manifest.name == "petals"
    for trust in ({"trust_pickle": True}, {"trust_code": True}):
        served = serve_layout(Settings(repo=source, **trust))
        assert load_bundle(next(served.repo.glob("iris/*")), original=True, **trust).manifest.name == "iris"
