"""``ferry serve --max-memory``: many models under a memory budget, against real servers and built bundles.

Fifty linear models (model ``m<i>`` answers ``10 + i`` on all-ones input) under a budget that holds
ten: readiness means the index is verified, models load on their first request, the least recently
used are unloaded by bytes, and a model with a request in flight is never unloaded.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from sklearn.linear_model import LinearRegression

import ferry
from conftest import free_port
from ferry.grpc import inference_pb2 as pb
from ferry.grpc import inference_pb2_grpc as pb_grpc
from ferry.runtimes.load import MODEL_OVERHEAD_BYTES
from ferry.serving.budget import parse_size
from test_connections import _module

FEATURES = ["a", "b", "c", "d"]
ONES = dict.fromkeys(FEATURES, 1.0)
MODELS = 50
_X = np.random.default_rng(0).random((20, 4))


def _linear(shift: float) -> LinearRegression:
    return LinearRegression().fit(_X, _X @ [1.0, 2.0, 3.0, 4.0] + shift)


@pytest.fixture(scope="module")
def many_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("many")
    for i in range(MODELS):
        ferry.build(_linear(i), f"m{i}", repo, version="1", features=FEATURES)
    return repo


@pytest.fixture(scope="module")
def model_bytes(many_repo: Path) -> int:
    folder = many_repo / "m0" / "1"
    return MODEL_OVERHEAD_BYTES + sum(p.stat().st_size for p in folder.glob("*.npy"))


def _states(url: str) -> dict[str, tuple[str, int]]:
    listing = httpx.get(url + "/models").json()["models"]
    return {f"{v['name']}/{v['version']}": (v["state"], v.get("bytes", 0)) for m in listing for v in m["versions"]}


def _gauge(url: str, name: str, **labels: str) -> float:
    text = httpx.get(url + "/metrics").text
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        series, _, value = line.rpartition(" ")
        if series == (f"{name}{{{wanted}}}" if labels else name):
            return float(value)
    raise AssertionError(f"no {name}{labels} in /metrics")


def _predict(url: str, model: str, body: Any = ONES, timeout: float = 30.0) -> Any:
    answer = httpx.post(f"{url}/models/{model}/predict", json=body, timeout=timeout)
    assert answer.status_code == 200, answer.text
    return answer.json()["prediction"]


def _answer(url: str, model: str, body: Any) -> tuple[int, Any]:
    """Status and the one number of an echoing tensor model's answer."""
    answer = httpx.post(f"{url}/models/{model}/predict", json=body, timeout=30)
    numbers = re.findall(r"-?\d+\.\d+", answer.text)
    return answer.status_code, float(numbers[0]) if numbers else answer.text


def test_parse_size_reads_binary_and_decimal_units() -> None:
    assert parse_size("1GiB") == 1 << 30
    assert parse_size("512MiB") == 512 << 20
    assert parse_size("800MB") == 800_000_000
    assert parse_size("1000") == 1000
    for bad in ("lots", "-1GiB", "0", "1 PiB"):
        with pytest.raises(ValueError, match="--max-memory"):
            parse_size(bad)


def test_a_bad_size_stops_start_up_naming_the_option(many_repo: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ferry", "serve", str(many_repo), "--max-memory", "lots"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--max-memory must be a size like 1GiB" in done.stderr


def test_fifty_models_answer_in_turn_under_a_budget_of_ten(many_repo: Path, model_bytes: int, serve: Any) -> None:
    budget = 10 * model_bytes + model_bytes // 2
    server = serve(str(many_repo), "--max-memory", str(budget), "--no-preload")
    # Ready before any model loads: the index is verified, nothing is loaded.
    states = _states(server.url)
    assert len(states) == MODELS and {s for s, _ in states.values()} == {"UNLOADED"}
    for turn in range(2):  # twice round: the second pass reloads what the first unloaded
        for i in range(MODELS):
            assert _predict(server.url, f"m{i}") == pytest.approx(10.0 + i)
            held = sum(b for _, b in _states(server.url).values())
            assert held <= budget, f"turn {turn}, m{i}: {held} bytes loaded, budget {budget}"
    states = _states(server.url)
    ready = {k for k, (s, _) in states.items() if s == "READY"}
    assert ready == {f"m{i}/1" for i in range(MODELS - 10, MODELS)}  # the ten most recently used
    assert {s for k, (s, _) in states.items() if k not in ready} == {"UNLOADED"}
    assert all(b == model_bytes for k, (_, b) in states.items() if k in ready)
    # /metrics: per-model bytes and the total, sampled about once a second.
    deadline = time.monotonic() + 10
    while _gauge(server.url, "ferry_model_loaded_bytes", model="m49", version="1") == 0:
        assert time.monotonic() < deadline, "the last model loaded never showed in /metrics"
        time.sleep(0.2)
    assert _gauge(server.url, "ferry_models_loaded_bytes") == 10 * model_bytes
    assert _gauge(server.url, "ferry_model_loaded_bytes", model="m49", version="1") == model_bytes
    assert _gauge(server.url, "ferry_model_loaded_bytes", model="m0", version="1") == 0
    assert _gauge(server.url, "ferry_model_state", model="m0", version="1", state="UNLOADED") == 1
    # Concurrent first requests for one unloaded model share one load.
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: _predict(server.url, "m0"), range(8)))
    assert answers == [pytest.approx(10.0)] * 8
    loads = re.findall(r"model m0:1 READY", server.output())
    assert len(loads) == 3, loads  # once per pass above, and once for the eight concurrent requests


def test_every_load_and_every_eviction_is_counted(many_repo: Path, model_bytes: int, serve: Any) -> None:
    budget = 2 * model_bytes + model_bytes // 2  # two models fit
    server = serve(str(many_repo), "--max-memory", str(budget), "--no-preload")
    for _ in range(2):  # m0, m1, m2, m0, m1, m2: six loads, the last four each evict the least recently used
        for i in range(3):
            assert _predict(server.url, f"m{i}") == pytest.approx(10.0 + i)

    def counted() -> tuple[float, ...]:
        text = httpx.get(server.url + "/metrics").text
        return tuple(
            sum(float(v) for v in re.findall(rf"^{name}{{{pattern}}} (\S+)$", text, re.M))
            for name, pattern in [
                ("ferry_model_loads_total", r'kind="load",model="m0",result="ready",version="1"'),
                ("ferry_model_loads_total", r'kind="reload",model="m0",result="ready",version="1"'),
                ("ferry_model_loads_total", r'kind="\w+",model="m\d+",result="ready",version="1"'),
                ("ferry_model_evictions_total", r'model="m\d+",version="1"'),
                ("ferry_model_evictions_total", r'model="m0",version="1"'),
            ]
        )

    deadline = time.monotonic() + 10  # sampled into /metrics about once a second
    while counted() != (1, 1, 6, 4, 2):
        assert time.monotonic() < deadline, f"(m0 loads, m0 reloads, all loads, evictions, m0's) = {counted()}"
        time.sleep(0.2)


def test_preload_fills_the_budget_at_start(many_repo: Path, model_bytes: int, serve: Any) -> None:
    budget = 10 * model_bytes + model_bytes // 2
    server = serve(str(many_repo), "--max-memory", str(budget))
    deadline = time.monotonic() + 30
    while "LOADING" in {s for s, _ in _states(server.url).values()} and time.monotonic() < deadline:
        time.sleep(0.1)
    while sum(s == "READY" for s, _ in _states(server.url).values()) < 10 and time.monotonic() < deadline:
        time.sleep(0.1)
    states = _states(server.url)
    assert sum(s == "READY" for s, _ in states.values()) == 10
    assert sum(b for _, b in states.values()) <= budget
    assert _predict(server.url, "m49") == pytest.approx(59.0)  # one past the preloaded: loads, one unloads
    assert sum(b for _, b in _states(server.url).values()) <= budget


def test_sigterm_during_preload_stops_at_once(tmp_path: Path, serve: Any) -> None:
    """A preload stops at the next model: shutdown never waits for the rest of the repository to load."""
    tensor = {"kind": "tensor", "tensors": [{"name": "x", "shape": [-1, -1]}]}
    for i in range(8):  # each takes a second to load (its warm-up call sleeps)
        ferry.build(_module("sleepy").Sleepy, f"s{i}", tmp_path, version="1", input_schema=tensor, sample_input=[1.0])
    server = serve(str(tmp_path), "--max-memory", "1GiB", env={"FERRY_TEST_SLEEP": "1"})
    started = time.monotonic()
    assert server.stop() == 0
    assert time.monotonic() - started < 5  # the whole preload would take 8 s
    assert "s7:1 READY" not in server.log_path.read_text()


def test_a_model_with_a_request_in_flight_is_never_unloaded(
    many_repo: Path, model_bytes: int, tmp_path: Path, serve: Any
) -> None:
    repo = tmp_path / "repo"
    for i in range(12):
        shutil.copytree(many_repo / f"m{i}", repo / f"m{i}")
    tensor = {"kind": "tensor", "tensors": [{"name": "x", "shape": [-1, -1]}]}
    ferry.build(_module("sleepy").Sleepy, "sleepy", repo, version="1", input_schema=tensor, sample_input=[1.0])
    budget = 3 * model_bytes  # the sleepy model and about two linear ones
    server = serve(str(repo), "--max-memory", str(budget), "--no-preload", env={"FERRY_TEST_SLEEP": "1.5"})
    slow: list[Any] = []
    request = threading.Thread(target=lambda: slow.append(_answer(server.url, "sleepy", [[7.0]])))
    request.start()
    deadline = time.monotonic() + 30
    while _states(server.url)["sleepy/1"][0] != "READY" and time.monotonic() < deadline:
        time.sleep(0.05)  # loaded (and warmed up): its request is now predicting, for 1.5 s
    for i in range(12):  # every other model loads meanwhile, each unloading another
        assert _predict(server.url, f"m{i}") == pytest.approx(10.0 + i)
        if request.is_alive():
            assert _states(server.url)["sleepy/1"][0] == "READY"
    request.join(30)
    assert slow == [(200, 7.0)]
    for i in range(3):  # once idle, it is the least recently used, and goes
        _predict(server.url, f"m{i}")
    assert _states(server.url)["sleepy/1"][0] == "UNLOADED"
    assert _answer(server.url, "sleepy", [[2.0]]) == (200, 2.0)


def test_a_tampered_artifact_is_refused_at_start(many_repo: Path, tmp_path: Path, serve: Any) -> None:
    repo = tmp_path / "repo"
    for i in range(3):
        shutil.copytree(many_repo / f"m{i}", repo / f"m{i}")
    coef = repo / "m1" / "1" / "compiled-coef.npy"
    data = bytearray(coef.read_bytes())
    data[-1] ^= 1
    coef.write_bytes(bytes(data))
    grpc_port = free_port()
    server = serve(str(repo), "--max-memory", "1MiB", "--no-preload", "--grpc-port", str(grpc_port), wait_ready=False)
    deadline = time.monotonic() + 30
    while _states(server.url)["m1/1"][0] == "LOADING" and time.monotonic() < deadline:
        time.sleep(0.05)
    ready = httpx.get(server.url + "/ready")
    assert ready.status_code == 503
    failed = next(m for m in ready.json()["models"] if m["name"] == "m1")
    assert failed["state"] == "FAILED" and "compiled-coef.npy" in failed["error"] and "changed" in failed["error"]
    assert _states(server.url)["m0/1"][0] == "UNLOADED"  # verified, not loaded
    # An unloaded model is ready to serve; reading its metadata loads it.
    assert httpx.get(server.url + "/v2/models/m0/ready").json()["ready"] is True
    assert httpx.get(server.url + "/v1/models/m0").json()["ready"] is True
    assert _states(server.url)["m0/1"][0] == "UNLOADED"
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ModelReady(pb.ModelReadyRequest(name="m2"), timeout=10).ready is True
        assert stub.ModelReady(pb.ModelReadyRequest(name="m1"), timeout=10).ready is False  # FAILED
        assert stub.ModelMetadata(pb.ModelMetadataRequest(name="m2"), timeout=30).name == "m2"
    assert _states(server.url)["m2/1"][0] == "READY"
    metadata = httpx.get(server.url + "/v2/models/m0", timeout=30)
    assert metadata.status_code == 200 and metadata.json()["name"] == "m0"
    assert httpx.get(server.url + "/models/m0/metadata", timeout=30).json()["input"]["features"][0]["name"] == "a"
    assert _states(server.url)["m0/1"][0] == "READY"
    refused = httpx.post(server.url + "/models/m1/predict", json=ONES)
    assert refused.status_code == 503 and "FAILED" in refused.json()["error"]
    assert _predict(server.url, "m2") == pytest.approx(12.0)


def test_versions_hot_reload_and_routes_under_a_budget(
    many_repo: Path, model_bytes: int, tmp_path: Path, serve: Any
) -> None:
    repo = tmp_path / "repo"
    for i in range(4):
        shutil.copytree(many_repo / f"m{i}", repo / f"m{i}")
    ferry.build(_linear(100.0), "m0", repo, version="2", features=FEATURES)
    routes = tmp_path / "routes.yaml"
    routes.write_text(
        "name: router\nrules:\n  - name: three\n    match: {headers: {x-model: three}}\n    to: {model: m3}\n"
        "default: {to: {model: m1}}\n"
    )
    budget = 2 * model_bytes + model_bytes // 2
    server = serve(str(repo), "--max-memory", str(budget), "--no-preload", "--watch", "--routes", str(routes))
    assert _predict(server.url, "m0") == pytest.approx(110.0)  # the newest version by default
    assert _predict(server.url, "m0/versions/1") == pytest.approx(10.0)
    listing = {m["name"]: m for m in httpx.get(server.url + "/models").json()["models"]}
    assert listing["m2"]["default_version"] == "1"  # an unloaded version is still the one a request gets
    # The routes file routes to unloaded models too.
    assert _predict(server.url, "router") == pytest.approx(11.0)
    three = httpx.post(server.url + "/models/router/predict", json=ONES, headers={"x-model": "three"}, timeout=30)
    assert three.json()["prediction"] == pytest.approx(13.0)
    # --watch: a version copied in takes traffic, within the budget.
    staging = tmp_path / "staging"
    ferry.build(_linear(200.0), "m2", staging, version="2", features=FEATURES)
    shutil.copytree(staging / "m2" / "2", repo / "m2" / "2")
    deadline = time.monotonic() + 30
    while _predict(server.url, "m2") != pytest.approx(210.0) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _predict(server.url, "m2") == pytest.approx(210.0)
    for name in ("m0", "m1", "m3", "m2"):
        _predict(server.url, name)
        assert sum(b for _, b in _states(server.url).values()) <= budget


def test_the_readme_block_serves(many_repo: Path, serve: Any) -> None:
    """Each line of the README's block, against a copy of the fifty models: ready, and every model answers."""
    import shlex

    from tests.manual import manual_text

    readme = manual_text()
    block = readme.split("### Many models under a memory budget", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [shlex.split(line) for line in block.splitlines() if line.strip() and not line.startswith("#")]
    assert len(commands) == 2
    for argv in commands:
        assert argv[:3] == ["ferry", "serve", "models"]
        server = serve(str(many_repo), *argv[3:])
        assert _predict(server.url, "m7") == pytest.approx(17.0)
        server.stop()
