"""A tiny raw-ASGI server for load and contract tests: fast, stalling, failing and deliberately broken routes.

Run as ``python tests/test_loadtest_fakeserver.py PORT``; the fixture ``fake_server`` starts it on loopback.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import free_port

Scope = dict[str, Any]

NATIVE_META = {
    "nan500": {
        "name": "nan500",
        "input": {"kind": "features", "features": [{"name": "a", "dtype": "float64"}, {"name": "b"}]},
        "output": {"kind": "label"},
        "labels": ["x", "y"],
        "sample_input": {"a": 1.0, "b": 2.0},
    },
    "badshape": {
        "name": "badshape",
        "input": {"kind": "tensor", "tensors": [{"name": "X", "dtype": "float64", "shape": [-1, 2]}]},
        "output": {"kind": "tensor", "shape": [-1, 2]},
    },
}
OIP_META = {
    "name": "oip",
    "platform": "fake",
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 1]}],
}
# A v2-only server of a DataFrame model, strict as tritonclient's servers are: one input per column, each of
# shape [n, 1] and its own datatype (BYTES for text), no native metadata.
COLUMNS_META = {
    "name": "columns",
    "platform": "fake",
    "inputs": [
        {"name": "sex", "datatype": "BYTES", "shape": [-1, 1]},
        {"name": "pclass", "datatype": "INT64", "shape": [-1, 1]},
        {"name": "alone", "datatype": "BOOL", "shape": [-1, 1]},
        {"name": "age", "datatype": "FP64", "shape": [-1, 1]},
    ],
    "outputs": [{"name": "predict", "datatype": "INT64", "shape": [-1]}],
}
_PYTHON_TYPES: dict[str, Any] = {"BYTES": str, "INT64": int, "BOOL": bool, "FP64": float}
_stall = {"count": 0}


async def app(scope: Scope, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    status, answer = await route(scope["method"], scope["path"], body)
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": json.dumps(answer).encode()})


async def route(method: str, path: str, body: bytes) -> tuple[int, Any]:
    if path == "/fast":
        return 200, {"prediction": 1}
    if path == "/fail":
        return 503, {"error": "overloaded", "code": "overloaded"}
    if path == "/stall":
        # The 21st request freezes the whole server for one second (a blocking call, as a GC pause or a
        # stuck model would); everything that arrives meanwhile waits in the socket backlog.
        _stall["count"] += 1
        if _stall["count"] == 21:
            time.sleep(1.0)
        return 200, {"prediction": 1}
    parts = path.strip("/").split("/")
    if parts[:1] == ["models"] and len(parts) == 3 and parts[2] == "metadata" and parts[1] in NATIVE_META:
        return 200, NATIVE_META[parts[1]]
    if path == "/v2/models/oip":
        return 200, OIP_META
    if path == "/v2/models/columns":
        return 200, COLUMNS_META
    if method == "POST" and path == "/v2/models/columns/infer":
        return columns(body)
    if method == "POST" and path == "/models/nan500/predict":
        return nan500(body)
    if method == "POST" and path == "/models/badshape/predict":
        return badshape(body)
    if method == "POST" and path == "/v2/models/oip/infer":
        return oip(body)
    return 404, {"error": f"no route {path}"}


def _parse(body: bytes) -> Any:
    return json.loads(body)  # accepts NaN, like a careless service


def nan500(body: bytes) -> tuple[int, Any]:
    try:
        record = _parse(body)
    except ValueError:
        return 400, {"error": "malformed JSON"}
    if len(body) > 1_000_000:
        return 413, {"error": "too large"}
    if isinstance(record, dict) and any(isinstance(v, float) and math.isnan(v) for v in record.values()):
        return 500, {"error": "internal"}  # the bug under test: NaN crashes the model
    if not isinstance(record, dict) or set(record) != {"a", "b"}:
        return 400, {"error": "expected a and b"}
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in record.values()):
        return 400, {"error": "expected numbers"}
    return 200, {"prediction": "x"}


def badshape(body: bytes) -> tuple[int, Any]:
    try:
        record = json.loads(body, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    except ValueError:
        return 400, {"error": "malformed JSON or NaN"}
    if len(body) > 1_000_000:
        return 413, {"error": "too large"}
    if not isinstance(record, dict) or set(record) != {"X"}:
        return 400, {"error": "expected X"}
    row = record["X"]
    if not isinstance(row, list) or len(row) != 2 or not all(isinstance(v, int | float) for v in row):
        return 400, {"error": "expected 2 numbers"}
    return 200, {"prediction": [*row, 0.0]}  # the bug under test: one value too many


def oip(body: bytes) -> tuple[int, Any]:
    try:
        request = json.loads(body, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    except ValueError:
        return 400, {"error": "malformed JSON or NaN"}
    if len(body) > 1_000_000:
        return 413, {"error": "too large"}
    inputs = request.get("inputs") if isinstance(request, dict) else None
    if not isinstance(inputs, list) or len(inputs) != 1 or inputs[0].get("name") != "x":
        return 400, {"error": "expected one input 'x'"}
    tensor = inputs[0]
    data, shape = tensor.get("data"), tensor.get("shape")
    if not isinstance(shape, list) or len(shape) != 2 or shape[1] != 2 or not isinstance(data, list):
        return 400, {"error": "x must have shape [n, 2]"}
    if len(data) != math.prod(shape) or not all(isinstance(v, int | float) for v in data):
        return 400, {"error": "x data does not match its shape or type"}
    rows = shape[0]
    return 200, {
        "model_name": "oip",
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [rows, 1], "data": [1.0] * rows}],
    }


def columns(body: bytes) -> tuple[int, Any]:
    try:
        inputs = json.loads(body)["inputs"]
        given = {t["name"]: t for t in inputs}
    except (ValueError, KeyError, TypeError):
        return 400, {"error": "expected inputs"}
    if sorted(given) != sorted(t["name"] for t in COLUMNS_META["inputs"]):
        return 400, {"error": f"expected the columns sex, pclass, alone, age, got {sorted(given)}"}
    for spec in COLUMNS_META["inputs"]:
        tensor, kind = given[spec["name"]], _PYTHON_TYPES[spec["datatype"]]
        if tensor.get("datatype") != spec["datatype"] or tensor.get("shape") != [1, 1]:
            return 400, {"error": f"{spec['name']}: expected {spec['datatype']} of shape [1, 1]"}
        if not all(type(v) is kind or (kind is float and type(v) is int) for v in tensor.get("data", [None])):
            return 400, {"error": f"{spec['name']}: expected {kind.__name__} values"}
    return 200, {
        "model_name": "columns",
        "outputs": [{"name": "predict", "datatype": "INT64", "shape": [1], "data": [1]}],
    }


class FakeServer:
    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__)), str(port)])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                httpx.get(self.url + "/fast", timeout=1.0)
                return
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError("the fake server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeServer]:
    server = FakeServer(free_port())
    yield server
    server.stop()


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), loop="uvloop", http="httptools", log_level="warning")
