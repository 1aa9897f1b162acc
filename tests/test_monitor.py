"""Training statistics at build time, PSI drift, and ``ferry monitor`` over a prediction log."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

import ferry
from ferry.bundle.manifest import read_manifest
from ferry.observability.drift import psi, training_stats


def test_psi_is_small_for_the_same_distribution_and_large_for_a_shift() -> None:
    rng = np.random.default_rng(0)
    train = rng.normal(0, 1, size=(5000, 1))
    histogram = training_stats(train, ["x"])["features"]["x"]["histogram"]
    assert len(histogram["shares"]) == 10 and sum(histogram["shares"]) == pytest.approx(1.0)
    assert psi(histogram, rng.normal(0, 1, 2000)) < 0.05
    assert psi(histogram, rng.normal(1.5, 1, 2000)) > 0.25


@pytest.fixture
def bundle_repo(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    x = np.column_stack([rng.normal(5, 1, 600), rng.normal(2, 0.5, 600)])
    y = (x[:, 0] + x[:, 1] > 7).astype(int)
    model = LogisticRegression().fit(x, y)
    repo = tmp_path / "repo"
    ferry.build(model, "risk", repo, features=["income", "age"], labels=["low", "high"], training_data=x)
    return repo


def test_build_keeps_training_statistics(bundle_repo: Path) -> None:
    stats = read_manifest(bundle_repo / "risk" / "1").metadata["training_stats"]
    assert stats["rows"] == 600 and set(stats["features"]) == {"income", "age"}
    income = stats["features"]["income"]
    assert income["mean"] == pytest.approx(5, abs=0.2) and income["quantiles"]["0.5"] == pytest.approx(5, abs=0.2)


def test_monitor_reports_predictions_over_time_and_drift(bundle_repo: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    start = datetime(2024, 5, 1, tzinfo=UTC)
    log = tmp_path / "predictions.jsonl"
    with log.open("w") as out:
        for i in range(400):
            income = rng.normal(5, 1) + (2.0 if i >= 200 else 0.0)  # income drifts in the second half
            record = {
                "ts": (start + timedelta(minutes=i)).isoformat(),
                "model": "risk",
                "version": "1",
                "request_id": f"r{i}",
                "latency_ms": 0.5,
                "inputs": [{"income": income, "age": rng.normal(2, 0.5)}],
                "outputs": ["high" if i >= 200 else "low"],
            }
            out.write(json.dumps(record) + "\n")
    cli = [sys.executable, "-m", "ferry", "monitor", str(log), "--repo", str(bundle_repo), "--intervals", "2"]
    result = subprocess.run([*cli, "--json"], capture_output=True, text=True, check=True)
    (model,) = json.loads(result.stdout)["models"]
    assert model["model"] == "risk" and model["records"] == 400 and model["rows"] == 400
    first, second = model["over_time"]
    assert first["shares"] == {"low": 1.0} and second["shares"] == {"high": 1.0}
    drift = model["drift"]["features"]
    assert drift["income"]["drift"] == "major" and drift["income"]["psi"] > 0.25
    assert drift["age"]["drift"] == "none"
    text = subprocess.run(cli, capture_output=True, text=True, check=True).stdout
    assert "risk:1  400 records, 400 rows" in text and "income" in text and "major" in text


def test_monitor_names_a_bad_line(tmp_path: Path) -> None:
    log = tmp_path / "broken.jsonl"
    log.write_text('{"ts": "2024-05-01T00:00:00+00:00"}\nnot json\n')
    result = subprocess.run([sys.executable, "-m", "ferry", "monitor", str(log)], capture_output=True, text=True)
    assert result.returncode == 1 and "broken.jsonl:2: not a JSON line" in " ".join(result.stderr.split())
