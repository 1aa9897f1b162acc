"""The model and the client calls of scripts/ci-clients, run in its fresh venv (Ferry beside the official clients).

``build WORK``: fit a LinearRegression, save it with skops, keep four rows and the model's own answers.
``call WORK HTTP_PORT GRPC_PORT tritonclient|kserve``: wait for /ready, then ask the served model those rows with
that client and require the model's own answers.
"""

from __future__ import annotations

import asyncio
import sys
import time
import urllib.request
import warnings
from pathlib import Path

import numpy as np


def build(work: Path) -> None:
    import skops.io as sio
    from sklearn.linear_model import LinearRegression

    x = np.random.default_rng(0).normal(size=(50, 3))
    model = LinearRegression().fit(x, x @ [1.5, -2.0, 0.5] + 3.0)
    sio.dump(model, work / "model.skops")
    np.save(work / "rows.npy", x[:4])
    np.save(work / "expected.npy", model.predict(x[:4]))


def import_ferry_stubs() -> None:
    """Ferry's generated modules, beside the client's own: any warning (protobuf's gencode/runtime check) fails."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from ferry.grpc import inference_pb2, inference_pb2_grpc  # noqa: F401


def wait_ready(http_port: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{http_port}/ready", timeout=2)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"ferry serve was not ready within {timeout:.0f} s") from None
            time.sleep(0.2)


def check(client: str, answer: np.ndarray, expected: np.ndarray) -> None:
    np.testing.assert_allclose(answer.reshape(-1), expected, rtol=1e-9)
    print(f"ci-clients: {client}: {len(expected)} rows equal LinearRegression.predict", file=sys.stderr)


def call_tritonclient(rows: np.ndarray, expected: np.ndarray, http_port: str, grpc_port: str) -> None:
    import tritonclient.grpc as triton_grpc
    import tritonclient.http as triton_http

    import_ferry_stubs()
    for name, module, url in (
        ("tritonclient gRPC", triton_grpc, f"127.0.0.1:{grpc_port}"),
        ("tritonclient HTTP", triton_http, f"127.0.0.1:{http_port}"),
    ):
        client = module.InferenceServerClient(url)
        assert client.is_server_ready() and client.is_model_ready("line"), name
        tensor = module.InferInput("input", list(rows.shape), "FP64")
        tensor.set_data_from_numpy(rows)
        result = client.infer("line", [tensor])
        response = result.get_response()
        output = response["outputs"][0]["name"] if module is triton_http else response.outputs[0].name
        check(name, result.as_numpy(output), expected)
        client.close()


def call_kserve(rows: np.ndarray, expected: np.ndarray, grpc_port: str) -> None:
    import kserve

    import_ferry_stubs()

    async def infer() -> np.ndarray:
        client = kserve.InferenceGRPCClient(f"127.0.0.1:{grpc_port}")
        request = kserve.InferRequest("line", [kserve.InferInput("input", list(rows.shape), "FP64", rows)])
        try:
            response = await client.infer(request)
        finally:
            await client.close()
        return np.asarray(response.outputs[0].as_numpy())

    check("kserve InferenceGRPCClient", asyncio.run(infer()), expected)


def main(argv: list[str]) -> None:
    command, work = argv[0], Path(argv[1])
    if command == "build":
        build(work)
        return
    http_port, grpc_port, client = argv[2:5]
    rows, expected = np.load(work / "rows.npy"), np.load(work / "expected.npy")
    wait_ready(http_port)
    if client == "tritonclient":
        call_tritonclient(rows, expected, http_port, grpc_port)
    else:
        call_kserve(rows, expected, grpc_port)


if __name__ == "__main__":
    main(sys.argv[1:])
