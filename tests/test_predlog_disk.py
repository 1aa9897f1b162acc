"""The prediction log on a full disk: predictions are untouched, counters count what was written, the
failure is logged once (no traceback per record), and the file stays JSON lines that ``ferry monitor`` reads."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from ferry.bundle.manifest import PredictionLogSpec
from ferry.observability import predlog
from ferry.observability.predlog import PredictionLog
from ferry.runtimes import Prediction
from ferry.runtimes.load import load_bundle
from ferry.serving.metrics import Metrics
from ferry.serving.registry import ModelHandle, ModelState

IRIS = {"length": 5.1, "width": 2.4}


def counted(text: str, outcome: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "ferry_prediction_log_records_total" and sample.labels.get("outcome") == outcome
    )


def monitor(*paths: Path) -> dict[str, Any]:
    command = [sys.executable, "-m", "ferry", "monitor", *map(str, paths), "--json"]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    summary: dict[str, Any] = json.loads(result.stdout)
    return summary


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 64 KiB filesystem (a tmpfs; mounting one needs root)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_disk_never_touches_predictions(
    serve: Any, example_repo: Path, tmp_path: Path, small_disk: Path
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(example_repo / "iris", repo / "iris")
    manifest_path = repo / "iris" / "1" / "ferry.yaml"
    manifest = yaml.safe_load(manifest_path.read_text())
    manifest["prediction_log"] = {"sample_rate": 1.0}
    manifest_path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    log = small_disk / "predictions.jsonl"
    server = serve(str(repo), "--grpc-port", "0", "--prediction-log", str(log))
    sent = 600  # about 150 bytes a record: twice what 64 KiB holds
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for i in range(sent):
            response = client.post("/models/iris/predict", json=IRIS, headers={"x-request-id": f"full-{i}"})
            assert response.status_code == 200 and response.json() == {"prediction": "virginica"}
        text = _metrics_once_all_counted(client, sent)
        written, failed = counted(text, "written"), counted(text, "failed")
        assert failed > 0 and written > 0 and counted(text, "dropped") == 0
        print(f"full 64 KiB disk: {sent} predictions all 200; {written:.0f} records written, {failed:.0f} failed")

        lines = log.read_bytes().splitlines()
        assert len(lines) == written  # counted as written exactly when written
        order = [int(json.loads(line)["request_id"].removeprefix("full-")) for line in lines]
        assert order == sorted(set(order))  # whole records, in order, none twice
        (model,) = monitor(log)["models"]
        assert model["records"] == written

        # The disk frees up (the operator moves the log away): writing resumes, and says so.
        kept = tmp_path / "kept.jsonl"
        shutil.copy(log, kept)
        log.unlink()
        for _ in range(5):
            assert client.post("/models/iris/predict", json=IRIS).status_code == 200
        _metrics_once_all_counted(client, sent + 5)
    assert len(log.read_bytes().splitlines()) == 5
    assert sum(m["records"] for m in monitor(kept, log)["models"]) == written + 5
    output = server.output()
    assert output.count("could not write the prediction log") == 1, output[-3000:]
    assert "No space left on device" in output and "Traceback" not in output
    assert "the prediction log writes to" in output


def _metrics_once_all_counted(client: httpx.Client, records: int) -> str:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        text = client.get("/metrics").text
        if counted(text, "written") + counted(text, "failed") >= records:
            return text
        time.sleep(0.1)
    raise AssertionError(f"{records} records were not all counted: {text}")


def test_a_write_cut_short_leaves_no_partial_record(
    example_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """At the I/O seam, for systems where a test cannot mount a filesystem: the disk fills mid-record."""
    loaded = load_bundle(example_repo / "iris" / "1")
    loaded.manifest.prediction_log = PredictionLogSpec(sample_rate=1.0)
    handle = ModelHandle("iris", "1", example_repo / "iris" / "1", state=ModelState.READY, model=loaded)
    path = tmp_path / "predictions.jsonl"
    metrics = Metrics()
    plog = PredictionLog(str(path), metrics)
    prediction = Prediction(values=["setosa"], probabilities=None)
    plog.record(handle, [[1.0, 2.0]], prediction, 0.001)
    _wait(lambda: counted(metrics.render().decode(), "written") == 1)

    real_write = os.write

    def half_then_full(fd: int, data: bytes) -> int:
        if len(data) > 1:
            return real_write(fd, data[: len(data) // 2])  # a short write, then ENOSPC
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(predlog.os, "write", half_then_full)
    with caplog.at_level(logging.ERROR, logger="ferry.prediction_log"):
        for _ in range(20):
            plog.record(handle, [[1.0, 2.0]], prediction, 0.001)
            time.sleep(0.005)  # separate batches, each one failing
        _wait(lambda: counted(metrics.render().decode(), "failed") == 20)
    monkeypatch.setattr(predlog.os, "write", real_write)
    plog.record(handle, [[3.0, 4.0]], prediction, 0.001)
    _wait(lambda: counted(metrics.render().decode(), "written") == 2)
    plog.close()
    records = [json.loads(line) for line in path.read_bytes().splitlines()]
    assert [r["inputs"] for r in records] == [[{"length": 1.0, "width": 2.0}], [{"length": 3.0, "width": 4.0}]]
    failures = [r for r in caplog.records if "could not write the prediction log" in r.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info is None


def _wait(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
