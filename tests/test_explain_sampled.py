"""Sampled explanations (issue 23): a model with no exact explanation (a Python class here), explained by
permutation sampling only where the operator names it (``ferry serve --explain-sampled NAME``), against the
background rows its build kept from ``training_data``, each contribution with its standard error; its metadata
(native and v2) says so, and the OpenAPI document lists its explain routes.

The estimate is checked against the quantity it estimates, computed exactly by brute force: the
interventional Shapley value over the same background rows (every subset of the three columns).
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import ferry
from conftest import ServerProcess
from ferry.runtimes.sampled import BACKGROUND_FILE, BACKGROUND_ROWS, SAMPLE_ROWS

MODEL = '''
import numpy as np


class Bumpy:
    """2a + b·c: additive in a, an interaction between b and c."""

    def predict(self, batch):
        x = np.asarray(batch, dtype=float)
        return (2 * x[:, 0] + x[:, 1] * x[:, 2]).tolist()
'''


def f(x: np.ndarray) -> np.ndarray:
    return 2 * x[..., 0] + x[..., 1] * x[..., 2]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("sampled")
    (folder / "bumpy.py").write_text(MODEL)
    spec = importlib.util.spec_from_file_location("bumpy", folder / "bumpy.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    repo = folder / "repo"
    train = np.random.default_rng(0).normal(size=(500, 3))
    for name in ("bumpy", "unnamed"):
        ferry.build(module.Bumpy, name, repo, features=["a", "b", "c"], training_data=train)
    ferry.build(module.Bumpy, "bare", repo, features=["a", "b", "c"])  # no training data, no background
    server = ServerProcess([str(repo), "--explain-sampled", "bumpy, bare"])
    yield {"server": server, "repo": repo}
    server.stop()


def _exact(x: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Interventional Shapley values over ``background``: v(S) = mean over b of f(x on S, b elsewhere)."""
    n = x.size

    def value(subset: tuple[int, ...]) -> float:
        rows = background.copy()
        rows[:, list(subset)] = x[list(subset)]
        return float(f(rows).mean())

    phi = np.zeros(n)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for r in range(n):
            weight = math.factorial(r) * math.factorial(n - r - 1) / math.factorial(n)
            for subset in itertools.combinations(others, r):
                phi[i] += weight * (value(tuple(sorted((*subset, i)))) - value(subset))
    return phi


def test_a_named_model_explains_by_sampling_with_standard_errors(served: dict[str, Any]) -> None:
    url, repo = served["server"].url, served["repo"]
    background = np.asarray(json.loads((repo / "bumpy" / "1" / BACKGROUND_FILE).read_text()), dtype=float)
    assert background.shape == (BACKGROUND_ROWS, 3)
    rows = [[1.5, -0.5, 2.0], [0.0, 1.0, 1.0], [-1.0, 2.0, -0.5]]
    response = httpx.post(f"{url}/models/bumpy/explain", json=rows, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["method"] == "sampling_shapley" and body["link"] == "identity"
    assert body["predictions"] == pytest.approx(f(np.asarray(rows)).tolist(), rel=1e-12)
    for row, contributions, errors in zip(rows, body["contributions"], body["standard_errors"], strict=True):
        exact = _exact(np.asarray(row), background)
        for k, name in enumerate(("a", "b", "c")):
            assert errors[name] > 0
            assert abs(contributions[name] - exact[k]) <= 5 * errors[name] + 1e-9, (name, contributions, exact)
        # each walk's steps add up to f(x) - f(b): exactly additive, whatever the sampling
        assert sum(contributions.values()) + body["expected_value"] == pytest.approx(f(np.asarray(row)), abs=1e-9)
    again = httpx.post(f"{url}/models/bumpy/explain", json=rows, timeout=30).json()
    assert again["contributions"] == body["contributions"]  # the same rows, the same samples
    kserve = httpx.post(f"{url}/v1/models/bumpy:explain", json={"instances": rows[:1]}, timeout=30).json()
    assert kserve["explanations"][0]["standard_errors"] == body["standard_errors"][0]
    inputs = [{"name": n, "datatype": "FP64", "shape": [3], "data": [r[k] for r in rows]} for k, n in enumerate("abc")]
    v2 = httpx.post(f"{url}/v2/models/bumpy/infer", json={"inputs": inputs, "parameters": {"explain": True}}).json()
    outputs = {o["name"]: o for o in v2["outputs"]}
    assert v2["parameters"]["explain_method"] == "sampling_shapley"
    assert outputs["contribution_standard_errors"]["shape"] == [3, 3]
    errors = np.asarray(outputs["contribution_standard_errors"]["data"]).reshape(3, 3)
    np.testing.assert_allclose(errors, [[e[n] for n in "abc"] for e in body["standard_errors"]], rtol=1e-12)


def test_sampling_is_off_unless_the_operator_names_the_model(served: dict[str, Any]) -> None:
    url = served["server"].url
    response = httpx.post(f"{url}/models/unnamed/explain", json=[[1.0, 2.0, 3.0]])
    assert response.status_code == 501, response.text
    assert "the python runtime has no exact explanation" in response.json()["error"]
    assert response.json()["explainable_models"] == ["bumpy"]  # named, with its background rows
    bare = httpx.post(f"{url}/models/bare/explain", json=[[1.0, 2.0, 3.0]])
    assert bare.status_code == 501, bare.text
    assert "no background rows: build it with --training-data FILE" in bare.json()["error"]


def test_metadata_and_openapi_say_a_named_model_explains_by_sampling(served: dict[str, Any]) -> None:
    url = served["server"].url
    sampled = {
        "method": "sampling_shapley",
        "link": "identity",
        "sampled": True,
        "model_rows_per_row": SAMPLE_ROWS,
        "samples": SAMPLE_ROWS // 4,  # walks of 3 columns: 4 model rows each
        "standard_errors": True,
    }
    for path in ("/models/bumpy/metadata", "/v2/models/bumpy", "/v2/models/bumpy/versions/1"):
        assert httpx.get(url + path).json()["explanation"] == sampled, path
    for name in ("unnamed", "bare"):  # not named; named without background rows
        for path in (f"/models/{name}/metadata", f"/v2/models/{name}"):
            assert "unavailable" in httpx.get(url + path).json()["explanation"], path
    assert "no background rows" in httpx.get(url + "/models/bare/metadata").json()["explanation"]["unavailable"]
    document = httpx.get(url + "/openapi.json").json()
    paths = document["paths"]
    for path in ("/models/bumpy/explain", "/models/bumpy/versions/1/explain", "/v1/models/bumpy:explain"):
        assert "200" in paths[path]["post"]["responses"], path
    assert not [p for p in paths if p.endswith("explain") and ("unnamed" in p or "bare" in p)]
    explanation = document["components"]["schemas"]["Explanation"]
    assert (
        "sampling_shapley" in explanation["properties"]["method"]["enum"]
        and "standard_errors" in explanation["properties"]
    )


def test_schemathesis_finds_no_failure_on_the_sampled_explain_routes(served: dict[str, Any], tmp_path: Path) -> None:
    """The document's sampled explain routes, checked both ways as tests/test_openapi.py checks the rest."""
    executable = shutil.which("schemathesis") or shutil.which("st")
    assert executable, "schemathesis is part of the test extra"
    command = [executable, "run", served["server"].url + "/openapi.json", "--checks", "all", "--max-examples", "5"]
    command += ["--generation-deterministic", "--phases", "coverage,fuzzing", "--workers", "1"]
    command += ["--request-timeout", "20", "--include-path-regex", r"^/(models/bumpy/|v1/models/bumpy:)explain$"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert re.search(r"\d+ generated, \d+ passed", output), output[-2000:]
    for code in ("ST101", "ST201", "ST202", "ST204", "failed"):
        assert code not in output, output[-6000:]
