"""ferry loadtest: open-loop accuracy, latency from the schedule, closed loop, SLA gates, data, reports."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import ServerProcess
from ferry.loadtest.data import load_records
from ferry.loadtest.engine import LoadTestOptions, run_loadtest, run_spec
from ferry.loadtest.report import render_html
from ferry.loadtest.runner import LoadSpec
from ferry.loadtest.schedule import Schedule, parse_duration, parse_ramp
from ferry.loadtest.schema import LoadTestError, ModelSchema, TensorSpec
from ferry.loadtest.sla import evaluate, parse_sla
from test_loadtest_fakeserver import FakeServer, fake_server

__all__ = ["fake_server"]  # the fixture, re-exported for pytest

BODY = [b'{"a": 1.0, "b": 2.0}']
STRESS = Path(__file__).parents[1] / "src" / "ferry" / "examples" / "data" / "reviews_stress.jsonl"


def open_loop(url: str, rate: float, seconds: float, processes: int = 1) -> dict[str, Any]:
    spec = LoadSpec(url, BODY, schedule=Schedule.constant(rate, seconds))
    return run_spec(spec, {"mode": "open"}, processes)


def test_open_loop_achieves_the_requested_rate(fake_server: FakeServer) -> None:
    summary = open_loop(fake_server.url + "/fast", 1000, 2.0)
    assert summary["sent"] == 2000
    assert summary["completed"] == 2000
    assert summary["achieved_rate"] == pytest.approx(1000, rel=0.03)
    assert summary["status_counts"] == {"200": 2000}
    assert summary["errors"] == {}
    assert set(summary["latency_ms"]) >= {"p50", "p90", "p99", "p999", "max"}
    assert summary["requested_rate"] == 1000


def test_open_loop_latency_counts_from_the_schedule(fake_server: FakeServer) -> None:
    # The server freezes for 1 s at the first request. A client that timed from its actual send, or that
    # waited for answers before sending (coordinated omission), would report a handful of slow requests.
    summary = open_loop(fake_server.url + "/stall", 100, 2.0)
    latency = summary["latency_ms"]
    assert latency["max"] >= 900
    assert latency["p90"] >= 500  # ~half the schedule fell inside the stall, waiting up to a second
    assert summary["sent"] == 200
    # The server stalled, not the generator: its worst lag is a fraction of the stall (on a busy 2-core CI box a
    # few sends can still be a few ms late, so the late-send count is not asserted here).
    assert summary["generator"]["max_lag_ms"] < 250


def test_closed_loop_keeps_c_users_busy(fake_server: FakeServer) -> None:
    spec = LoadSpec(fake_server.url + "/fast", BODY, concurrency=4, duration=0.5)
    summary = run_spec(spec, {"mode": "closed"})
    assert summary["requested_rate"] is None
    assert summary["completed"] > 20
    assert summary["status_counts"] == {"200": summary["completed"]}


def test_status_codes_and_error_kinds_are_counted(fake_server: FakeServer) -> None:
    summary = open_loop(fake_server.url + "/fail", 100, 0.5)
    assert summary["status_counts"] == {"503": 50}
    assert summary["errors"] == {"http 503 overloaded": 50}
    assert summary["error_rate"] == 1.0


def test_connection_errors_are_an_error_kind() -> None:
    from conftest import free_port

    summary = open_loop(f"http://127.0.0.1:{free_port()}/nothing", 50, 0.2)
    assert summary["status_counts"] == {}
    assert summary["errors"] == {"connection refused": 10}


def test_several_processes_share_the_rate_and_merge_histograms(fake_server: FakeServer) -> None:
    summary = open_loop(fake_server.url + "/fast", 400, 1.0, processes=2)
    assert summary["sent"] == 400
    assert summary["status_counts"] == {"200": 400}
    assert summary["latency_ms"]["max"] > 0


def test_ramp_schedule_sends_the_area_under_the_rate() -> None:
    schedule = parse_ramp("100:300:2s,300:300:1s")
    times = list(schedule.times())
    assert len(times) == 400 + 300
    assert times == sorted(times)
    assert schedule.rate_at(1.0) == pytest.approx(200)
    assert schedule.mean_rate == pytest.approx(700 / 3)


@pytest.mark.parametrize("text", ["100:200", "a:b:1s", "0:10:1s", "100:200:soon"])
def test_bad_ramps_say_what_is_expected(text: str) -> None:
    with pytest.raises(LoadTestError, match=r"ramp|duration"):
        parse_ramp(text)


def test_durations() -> None:
    assert parse_duration("30s") == 30
    assert parse_duration("2m") == 120
    assert parse_duration("500ms") == 0.5


SUMMARY = {"latency_ms": {"p50": 2.0, "p99": 40.0, "p999": 90.0, "max": 120.0}, "error_rate": 0.0005}


@pytest.mark.parametrize(
    ("sla", "passed"),
    [
        ("p99<50ms,errors<0.1%", True),
        ("p99<40ms", False),
        ("p99<=40ms", True),
        ("p99.9<0.1s", True),
        ("max<0.1s", False),
        ("errors<0.01%", False),
    ],
)
def test_sla_gates(sla: str, passed: bool) -> None:
    assert evaluate(parse_sla(sla), SUMMARY)["passed"] is passed


@pytest.mark.parametrize("sla", ["p99>50ms", "p99<50", "errors<1ms", "latency<1s", ""])
def test_bad_sla_is_refused(sla: str) -> None:
    with pytest.raises(LoadTestError):
        parse_sla(sla)


def test_data_sources(tmp_path: Path) -> None:
    schema = ModelSchema("m", "features", [TensorSpec("a", "float64", [1]), TensorSpec("n", "int64", [1])])
    (tmp_path / "d.csv").write_text("a,n\n1.5,2\n3,4\n")
    assert load_records(str(tmp_path / "d.csv"), schema) == [{"a": 1.5, "n": 2}, {"a": 3.0, "n": 4}]
    (tmp_path / "d.jsonl").write_text('{"a": 1}\n\n{"a": 2}\n')
    assert load_records(str(tmp_path / "d.jsonl"), schema) == [{"a": 1}, {"a": 2}]
    generated = load_records("generated", schema)
    assert len(generated) == 256 and all(set(r) == {"a", "n"} for r in generated)
    images = tmp_path / "images"
    images.mkdir()
    (images / "one.png").write_bytes(b"\x89PNG fake")
    image_schema = ModelSchema("m", "image", [TensorSpec("image", "string", [-1])], field="image")
    assert load_records(str(images), image_schema) == [{"image": base64.b64encode(b"\x89PNG fake").decode()}]
    with pytest.raises(LoadTestError, match="no such file"):
        load_records(str(tmp_path / "missing.jsonl"), schema)


class _SvgCounter(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def test_html_report_has_latency_lines_and_stacked_status_bars(fake_server: FakeServer) -> None:
    summary = open_loop(fake_server.url + "/fast", 200, 1.5)
    summary["timeline"].append({"t": 2, "requests": 3, "status_counts": {"200": 1, "503": 2}, "latency_ms": {}})
    page = render_html(summary)
    parser = _SvgCounter()
    parser.feed(page)
    ids = {attrs.get("id") for _, attrs in parser.tags}
    assert {"latency-chart", "throughput-chart", "summary"} <= ids
    series = {attrs["data-series"] for tag, attrs in parser.tags if tag == "polyline"}
    assert series == {"p50", "p90", "p99"}
    bars = [attrs for tag, attrs in parser.tags if tag == "rect" and attrs.get("class") == "bar"]
    assert {b["data-status"] for b in bars} == {"200", "503"}
    assert all(float(b["height"] or 0) >= 0 for b in bars)
    assert not [tag for tag, attrs in parser.tags if tag in ("script", "link", "img") or "src" in attrs]  # no CDN


def ferry(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ferry", *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def examples(examples_server: ServerProcess) -> ServerProcess:
    return examples_server  # the session's server over the examples (tests/conftest.py)


def test_cli_reviews_stress_set_passes_a_loose_gate_and_writes_json_and_html(examples: Any, tmp_path: Path) -> None:
    out, report = tmp_path / "r.json", tmp_path / "r.html"
    done = ferry(
        "loadtest", examples.url, "--model", "reviews", "--data", str(STRESS), "--rate", "50", "--duration", "1s",
        "--sla", "p99<10s,errors<1%", "--json", str(out), "--report", str(report),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["status_counts"] == {"200": 50}
    assert result["distinct_bodies"] == len(STRESS.read_text(encoding="utf-8").splitlines())
    assert result["sla"]["passed"] is True
    assert {"requested_rate", "achieved_rate", "latency_ms", "status_counts", "errors"} <= set(result)
    assert "<svg" in report.read_text()


def test_cli_failing_gate_exits_1(examples: Any) -> None:
    done = ferry("loadtest", examples.url, "--model", "iris", "--rate", "50", "--duration", "0.5s", "--sla", "p50<1us")
    assert done.returncode == 2  # 1us is not a unit: refused before any load is sent
    done = ferry("loadtest", examples.url, "--model", "iris", "--rate", "50", "--duration", "0.5s", "--sla", "p50<0ms")
    assert done.returncode == 1
    assert "FAIL" in done.stdout and "p50<0ms" in done.stdout


def test_cli_find_max_reports_a_rate(examples: Any, tmp_path: Path) -> None:
    out = tmp_path / "max.json"
    done = ferry(
        "loadtest", examples.url, "--model", "iris", "--find-max", "--sla", "p99<2s,errors<1%",
        "--rate", "50", "--step-duration", "0.5s", "--max-rate", "400", "--json", str(out),
    )  # fmt: skip
    # Rates double from 50 until the SLA breaks or 400 is reached, then bisect: a handful of half-second steps.
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["max_rate"] >= 50
    assert result["steps"][0]["rate"] == 50


@pytest.mark.parametrize("protocol", ["native", "v2", "v1", "seldon"])
def test_every_protocol_shapes_requests_the_server_accepts(examples: Any, protocol: str) -> None:
    probe = {
        "native": ("/models/iris/predict", {"length": 5.1, "width": 2.4}),
        "v1": ("/v1/models/iris:predict", {"instances": [{"length": 5.1, "width": 2.4}]}),
        "seldon": ("/seldon/iris/api/v1.0/predictions", {"data": {"ndarray": [[5.1, 2.4]]}}),
        "v2": ("/v2/models/iris/infer", {"inputs": []}),
    }[protocol]
    assert httpx.post(examples.url + probe[0], json=probe[1]).status_code != 404  # the route is served
    summary = run_loadtest(
        LoadTestOptions(examples.url, model="iris", protocol=protocol, schedule=Schedule.constant(40, 0.5))
    )
    assert summary["status_counts"] == {"200": 20}, summary["errors"]


def test_cli_grpc_protocol_sends_model_infer_and_counts_grpc_codes(example_repo: Path, tmp_path: Path) -> None:
    from conftest import free_port

    grpc_port = free_port()
    server = ServerProcess([str(example_repo), "--grpc-port", str(grpc_port)])
    try:
        out = tmp_path / "grpc.json"
        target = f"127.0.0.1:{grpc_port}"
        done = ferry(
            "loadtest", server.url, "--model", "iris", "--protocol", "grpc", "--grpc-target", target,
            "--rate", "100", "--duration", "1s", "--sla", "errors<1%", "--json", str(out),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        result = json.loads(out.read_text())
        assert result["status_counts"] == {"200": 100} and result["url"].startswith(f"grpc://{target}/inference.")
        metrics = httpx.get(server.url + "/metrics").text  # the server saw them as gRPC ModelInfer calls
        calls = [
            line
            for line in metrics.splitlines()
            if line.startswith("ferry_requests_total{") and 'protocol="grpc"' in line
        ]
        assert len(calls) == 1 and 'model="iris"' in calls[0] and 'status="OK"' in calls[0]
        assert float(calls[0].rsplit(" ", 1)[1]) == 101  # the 100 measured and the one warm-up call
        # A body the server refuses comes back as the gRPC code's HTTP equivalent, named in the error kind.
        spec = LoadSpec(f"grpc://{target}", [b"\x0a\x04nope"], schedule=Schedule.constant(20, 0.5), grpc_target=target)
        summary = run_spec(spec, {"mode": "open"})
        assert summary["status_counts"] == {"404": 10} and "grpc NOT_FOUND" in summary["errors"]
    finally:
        server.stop()
