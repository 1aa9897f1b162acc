"""Metrics across workers, request IDs, access and structured logs, the prediction log, the Grafana dashboard.

What the logs on stdout and the workers show runs on processes; the prediction log on Ferry in process
(``tests/inprocess.py``)."""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import time
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from ferry.bundle.manifest import PredictionLogSpec
from ferry.observability.predlog import PredictionLog
from ferry.observability.stats import quantile
from ferry.runtimes import Prediction
from ferry.runtimes.load import load_bundle
from ferry.serving.metrics import Metrics
from ferry.serving.registry import ModelHandle, ModelState
from inprocess import inprocess_fixture  # noqa: F401 (the fixture)

ROOT = Path(__file__).resolve().parent.parent
IRIS = {"length": 5.1, "width": 2.4}


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples]


def total(text: str, name: str, **labels: str) -> float:
    return sum(v for n, lab, v in samples(text) if n == name and all(lab.get(k) == w for k, w in labels.items()))


def access_lines(output: str) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("logger") == "ferry.access"]


@pytest.fixture
def iris_repo(example_repo: Path, tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    shutil.copytree(example_repo / "iris", repo / "iris")
    return repo


def metrics_folders() -> set[str]:
    return set(glob.glob(os.path.join(os.environ.get("TMPDIR", "/tmp"), "ferry-metrics-*")))


def test_metrics_are_summed_across_workers(serve, iris_repo: Path) -> None:
    before = metrics_folders()
    server = serve(str(iris_repo), "--workers", "2", "--grpc-port", "0")
    (folder,) = metrics_folders() - before
    for _ in range(40):  # a new connection each time, so the kernel spreads them over both workers
        response = httpx.post(server.url + "/models/iris/predict", json=IRIS, headers={"connection": "close"})
        assert response.json()["prediction"] == "virginica"
    deadline = time.monotonic() + 10
    while True:  # the access log lines of both workers reach the log file
        served = [line for line in access_lines(server.output()) if line["path"] == "/models/iris/predict"]
        if len(served) == 40 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    pids = {line["pid"] for line in served}
    print(f"predictions were served by worker pids {sorted(pids)}")
    for _ in range(4):  # whichever worker answers the scrape, it counts every worker's requests
        text = httpx.get(server.url + "/metrics").text
        assert total(text, "ferry_requests_total", model="iris", status="200") == 40
        assert total(text, "ferry_batch_size_rows_sum", model="iris", version="1") == 40
        assert total(text, "ferry_compute_seconds_count", model="iris", version="1") == 40
        assert total(text, "ferry_workers") == 2
        assert total(text, "ferry_model_state", model="iris", state="READY") == 1
        assert total(text, "ferry_model_loads_total", model="iris", kind="load", result="ready") == 2
        assert total(text, "ferry_process_resident_memory_bytes") > 10_000_000
    assert server.stop() == 0
    assert not os.path.exists(folder), "the per-server metrics folder is removed at exit"


def test_request_ids_reach_responses_errors_and_the_access_log(examples_server) -> None:
    url = examples_server.url
    given = httpx.post(url + "/models/iris/predict", json=IRIS, headers={"x-request-id": "trace-42"})
    assert given.headers["x-request-id"] == "trace-42"
    made = [httpx.get(url + "/models/iris/metadata").headers["x-request-id"] for _ in range(3)]
    assert len(set(made)) == 3 and all(re.fullmatch(r"[0-9a-f]{12}-[0-9a-f]+", m) for m in made)
    refused = httpx.post(url + "/models/iris/predict", content=b"{", headers={"x-request-id": "x" * 500})
    assert refused.status_code == 400
    assert refused.json()["request_id"] == refused.headers["x-request-id"] != "x" * 500  # too long: replaced
    missing = httpx.get(url + "/nowhere", headers={"x-request-id": "lost-1"})
    assert missing.json() == {"error": "no route GET /nowhere", "code": "http_404", "request_id": "lost-1"}

    time.sleep(0.3)
    lines = {line.get("request_id"): line for line in access_lines(examples_server.output())}
    hot = lines["trace-42"]
    assert hot["method"] == "POST" and hot["path"] == "/models/iris/predict" and hot["status"] == 200
    assert hot["model"] == "iris" and hot["bytes"] == len(given.content) and hot["latency_ms"] > 0
    assert lines[made[0]]["model"] == "iris" and lines[made[0]]["path"] == "/models/iris/metadata"
    assert lines[refused.headers["x-request-id"]]["status"] == 400
    assert lines["lost-1"]["status"] == 404 and lines["lost-1"]["model"] is None


def test_text_log_format(serve, iris_repo: Path) -> None:
    server = serve(str(iris_repo), "--grpc-port", "0", "--log-format", "text")
    httpx.post(server.url + "/models/iris/predict", json=IRIS, headers={"x-request-id": "plain-7"})
    time.sleep(0.3)
    line = next(x for x in server.output().splitlines() if "plain-7" in x)
    assert "INFO ferry.access: POST /models/iris/predict 200" in line
    assert "model=iris" in line and "request_id=plain-7" in line and not line.startswith("{")
    no_access = serve(str(iris_repo), "--grpc-port", "0", "--no-access-log")
    httpx.post(no_access.url + "/models/iris/predict", json=IRIS)
    assert "ferry.access" not in no_access.output()


def test_text_log_escapes_control_characters_so_no_line_is_forged(serve, iris_repo: Path) -> None:
    server = serve(str(iris_repo), "--grpc-port", "0", "--log-format", "text")
    forged = "2099-01-01 00:00:00,000 INFO ferry.access: POST /models/iris/predict 200 model=iris"
    path = "/models/iris%0A" + forged.replace(" ", "%20") + "%0D%1B[31m/x"  # uvicorn decodes the path
    assert httpx.get(server.url + path, headers={"x-request-id": "forge-1"}).status_code == 404
    time.sleep(0.3)
    lines = server.output().splitlines()
    assert not any(line.startswith("2099-01-01") for line in lines), "a forged line reached the log"
    (line,) = [x for x in lines if "forge-1" in x]
    assert line.startswith(tuple("0123456789")) and "ferry.access: GET /models/iris\\n2099-01-01" in line
    assert "\\r\\x1b[31m/x 404" in line and "\x1b" not in line and "\r" not in line
    assert "path=/models/iris\\n2099-01-01 00:00:00,000" in line  # the extra field too


def test_text_formatter_escapes_every_field() -> None:
    import logging

    from ferry.observability.logs import TextFormatter

    try:
        raise ValueError("bad input\nERROR forged: line")
    except ValueError:
        import sys

        exc_info = sys.exc_info()
    record = logging.LogRecord("ferry.x\n", logging.ERROR, __file__, 1, "got %s", ("a\rb\u2028c\\n",), exc_info)
    record.field = "v\x00\x7f\x85"
    text = TextFormatter().format(record)
    first, *rest = text.split("\n")
    assert "ferry.x\\n: got a\\rb\\u2028c\\\\n field=v\\x00\\x7f\\x85" in first
    # The traceback: its own lines, each indented under its record, so no line of it reads as a record.
    assert rest[0] == "  Traceback (most recent call last):" and all(line.startswith("  ") for line in rest), rest
    assert rest[-2:] == ["  ValueError: bad input", "  ERROR forged: line"]


def test_prediction_log_samples_redacts_rotates_and_counts(inprocess, iris_repo: Path, tmp_path: Path) -> None:
    manifest_path = iris_repo / "iris" / "1" / "ferry.yaml"
    manifest = yaml.safe_load(manifest_path.read_text())
    manifest["prediction_log"] = {"sample_rate": 1.0, "redact": ["width"]}
    manifest_path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    log = tmp_path / "predictions.jsonl"
    client = inprocess(
        iris_repo, "--grpc-port", "0", "--prediction-log", str(log), "--prediction-log-max-bytes", "3000"
    ).client
    for i in range(30):
        client.post("/models/iris/predict", json=IRIS, headers={"x-request-id": f"p-{i}"})
    client.post(
        "/v2/models/iris/infer",
        json={
            "inputs": [
                {"name": "length", "shape": [1], "datatype": "FP64", "data": [1.4]},
                {"name": "width", "shape": [1], "datatype": "FP64", "data": [0.2]},
            ]
        },
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = client.get("/metrics").text
        if total(text, "ferry_prediction_log_records_total", model="iris", outcome="written") == 31:
            break
        time.sleep(0.1)
    else:
        pytest.fail("31 records were not written")
    files = sorted(tmp_path.glob("predictions.jsonl*"))
    assert len(files) >= 2, "the log rotated past 3000 bytes"
    records = [json.loads(line) for f in files for line in f.read_text().splitlines()]
    assert len(records) == 31
    first = next(r for r in records if r["request_id"] == "p-0")
    assert first["model"] == "iris" and first["version"] == "1" and first["latency_ms"] > 0
    assert first["inputs"] == [{"length": 5.1, "width": "[redacted]"}]
    assert first["outputs"] == ["virginica"]
    assert any(r["inputs"] == [{"length": 1.4, "width": "[redacted]"}] for r in records), "v2 predictions are logged"
    assert total(text, "ferry_prediction_log_records_total", outcome="dropped") == 0


def test_prediction_log_drops_and_counts_when_the_writer_is_stuck(example_repo: Path, tmp_path: Path) -> None:
    loaded = load_bundle(example_repo / "iris" / "1")
    loaded.manifest.prediction_log = PredictionLogSpec(sample_rate=1.0)
    handle = ModelHandle("iris", "1", example_repo / "iris" / "1", state=ModelState.READY, model=loaded)
    fifo = tmp_path / "stuck"
    os.mkfifo(fifo)  # nobody reads it: the writer thread blocks opening it, as on a hung disk
    metrics = Metrics()
    plog = PredictionLog(str(fifo), metrics, buffer=5)
    prediction = Prediction(values=["setosa"], probabilities=None)
    started = time.perf_counter()
    for _ in range(100):
        plog.record(handle, [[1.0, 2.0]], prediction, 0.001)
    assert time.perf_counter() - started < 5  # never blocked (a generous bound, not a speed test)
    dropped = total(metrics.render().decode(), "ferry_prediction_log_records_total", outcome="dropped")
    assert 94 <= dropped <= 95  # five fit in the buffer, one may already be in the writer's hands
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # unblock the writer so it can finish
    plog.close(timeout_s=2)
    os.close(reader)


def test_quantile_interpolates_like_promql() -> None:
    buckets = {0.1: 50.0, 0.2: 90.0, 0.5: 100.0, float("inf"): 100.0}
    assert quantile(0.5, buckets) == pytest.approx(0.1)
    assert quantile(0.7, buckets) == pytest.approx(0.15)
    assert quantile(0.99, buckets) == pytest.approx(0.47)
    assert quantile(0.5, {0.1: 0.0, float("inf"): 0.0}) is None


def test_grafana_dashboard_uses_only_exposed_metrics(examples_server) -> None:
    httpx.post(examples_server.url + "/models/iris/predict", json=IRIS)
    text = httpx.get(examples_server.url + "/metrics").text
    exposed = set()
    for family in text_string_to_metric_families(text):
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
        exposed |= {family.name + s for s in suffixes}
    dashboard = json.loads((ROOT / "dashboards" / "ferry.json").read_text())
    assert dashboard["title"] and dashboard["uid"] and dashboard["panels"]
    used = set()
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = set(re.findall(r"\bferry_[a-z0-9_]+", target["expr"]))
            assert names, target["expr"]
            assert names <= exposed, f"{panel['title']}: {names - exposed} not in /metrics"
            used |= names
    for family in ("requests_total", "queue_wait_seconds_bucket", "compute_seconds_bucket", "model_state"):
        assert f"ferry_{family}" in used
    for name, labels, _ in samples(text):
        if name.startswith("ferry_"):
            assert re.fullmatch(r"ferry_[a-z_]+", name)
            assert not {"request_id", "path", "user", "client"} & set(labels), (name, labels)  # bounded labels
