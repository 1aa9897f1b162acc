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


def test_monitor_summarises_contributions_of_a_served_models_log_as_text_and_png(serve, tmp_path: Path) -> None:
    """A LightGBM model served with a prediction log: the mean |contribution| per feature over the logged rows
    equals LightGBM's own pred_contrib on the same rows; --explain-rows keeps the newest; the PNG is drawn."""
    import httpx
    import lightgbm
    import yaml

    rng = np.random.default_rng(3)
    x = rng.normal(size=(500, 3))
    booster = lightgbm.LGBMRegressor(n_estimators=20, num_leaves=7, verbose=-1).fit(x, 3 * x[:, 0] + x[:, 1])
    repo = tmp_path / "repo"
    ferry.build(booster, "price", repo, features=["size", "rooms", "noise"])
    manifest_path = repo / "price" / "1" / "ferry.yaml"
    manifest = yaml.safe_load(manifest_path.read_text())
    manifest["prediction_log"] = {"sample_rate": 1.0}
    manifest_path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    log = tmp_path / "predictions.jsonl"
    server = serve(str(repo), "--prediction-log", str(log))
    sent = rng.normal(size=(60, 3))
    for row in sent:
        body = {"size": row[0], "rooms": row[1], "noise": row[2]}
        assert httpx.post(server.url + "/models/price/predict", json=body).status_code == 200
    server.stop()  # the writer flushes on shutdown
    logged = np.asarray([[r["inputs"][0][n] for n in ("size", "rooms", "noise")] for r in map(json.loads, log.open())])
    assert len(logged) == 60
    chart = tmp_path / "drivers.png"
    cli = [sys.executable, "-m", "ferry", "monitor", str(log), "--repo", str(repo), "--explain-rows", "50"]
    result = subprocess.run([*cli, "--json", "--plot", str(chart)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    (model,) = json.loads(result.stdout)["models"]
    found = model["contributions"]
    assert found["rows"] == 50 and found["method"] == "tree_shap" and found["link"] == "identity"
    reference = np.abs(booster.booster_.predict(logged[-50:], pred_contrib=True)[:, :3]).mean(axis=0)
    assert list(found["mean_abs"]) == ["size", "rooms", "noise"]  # largest first
    np.testing.assert_allclose([found["mean_abs"][n] for n in ("size", "rooms", "noise")], reference, rtol=1e-9)
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and chart.stat().st_size > 5000
    text = subprocess.run(cli, capture_output=True, text=True, check=True).stdout
    assert "mean |contribution| over the newest 50 rows (tree_shap, raw score, link identity):" in text
    assert text.index("    size") < text.index("    rooms") < text.index("    noise")


def test_monitor_says_why_a_model_is_not_explained_and_draws_no_empty_chart(bundle_repo: Path, tmp_path: Path) -> None:
    log = tmp_path / "predictions.jsonl"
    record = {"ts": "2024-05-01T00:00:00+00:00", "model": "risk", "version": "1", "inputs": [{"income": "x"}]}
    log.write_text(json.dumps(record) + "\n")
    cli = [sys.executable, "-m", "ferry", "monitor", str(log), "--repo", str(bundle_repo), "--plot", "x.png"]
    result = subprocess.run(cli, capture_output=True, text=True, cwd=tmp_path)
    assert "contributions: no logged row has every feature as a number" in result.stdout
    assert result.returncode == 1 and "no model version in the log was explained" in " ".join(result.stderr.split())
    assert not (tmp_path / "x.png").exists()
