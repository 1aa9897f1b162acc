"""ferry check: passes against Ferry on every protocol it serves, catches deliberately broken services."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import httpx
import pytest

from conftest import ServerProcess
from ferry.loadtest.check import run_check
from test_loadtest_fakeserver import FakeServer, fake_server

__all__ = ["fake_server"]


@pytest.fixture
def examples(examples_server: ServerProcess) -> ServerProcess:
    return examples_server  # the session's server over the examples (tests/conftest.py)


@pytest.mark.parametrize("model", ["iris", "diabetes", "score", "reviews"])
def test_ferry_passes_its_own_contract(examples: Any, model: str) -> None:
    schema, results = run_check(examples.url, model)
    failed = [(r.name, r.detail) for r in results if not r.passed]
    assert not failed
    names = " ".join(r.name for r in results)
    for case in ("valid input", "wrong type", "missing field", "extra field", "malformed JSON", "oversized"):
        assert case in names
    assert schema.name == model


@pytest.mark.parametrize("protocol", ["v2", "v1", "seldon"])
def test_ferry_passes_on_other_protocols(examples: Any, protocol: str) -> None:
    path = {"v2": "/v2/models/iris", "v1": "/v1/models/iris", "seldon": "/seldon/iris/api/v1.0/predictions"}[protocol]
    response = httpx.request("GET" if protocol != "seldon" else "POST", examples.url + path, json={})
    if response.status_code == 404 and "no route" in response.text:
        pytest.skip(f"the server does not serve the {protocol} protocol yet")
    _, results = run_check(examples.url, "iris", protocol=protocol)
    assert not [(r.name, r.status, r.detail) for r in results if not r.passed]


def test_a_500_on_nan_is_caught(fake_server: FakeServer) -> None:
    _, results = run_check(fake_server.url, "nan500")
    failed = {r.name: r for r in results if not r.passed}
    assert list(failed) == ["NaN in 'a'"]
    assert failed["NaN in 'a'"].status == 500
    assert failed["NaN in 'a'"].detail == "expected a 4xx, got 500"
    assert "NaN" in failed["NaN in 'a'"].example


def test_a_wrong_output_shape_is_caught(fake_server: FakeServer) -> None:
    _, results = run_check(fake_server.url, "badshape")
    failed = [r for r in results if not r.passed]
    assert failed and all(r.expect == "200" for r in failed)
    assert "prediction has 3 elements, the schema declares 2" in failed[0].detail


def test_any_oip_v2_service_can_be_checked(fake_server: FakeServer) -> None:
    schema, results = run_check(fake_server.url, "oip")
    assert schema.source == "v2"
    assert not [(r.name, r.status, r.detail) for r in results if not r.passed]


def test_cli_exit_code_and_failing_example(fake_server: FakeServer) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ferry", "check", fake_server.url, "--model", "nan500"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "FAIL" in done.stdout and "failing example" in done.stdout
