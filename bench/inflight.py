"""Peak memory of ``ferry serve`` under many big gRPC calls at once, with and without ``--max-inflight-bytes``.

    python bench/inflight.py [--calls 100] [--mib 7.9] [--runs 1] [--bounds 0 268435456]

Serves one class model (each row's sum, after ``--sleep`` seconds: big requests, small answers), sends ``--calls``
concurrent ModelInfer calls of a ``[1, N]`` FP64 tensor of ``--mib`` MiB in raw_input_contents, and
samples the server's RSS (summed over its process tree, every 5 ms) from before the first call until
the last answer: peak minus the idle RSS is what the calls cost. Each ``--bounds`` value is one server
(0: no bound, what gRPC did before the bound). Refused calls (RESOURCE_EXHAUSTED) are counted, and
every answered call's values are checked against what was sent.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np

MODEL = """
import time

import numpy as np


class RowSum:
    def load(self) -> None:
        pass

    def predict(self, batch):
        time.sleep({sleep})
        return np.asarray(batch, dtype=np.float64).sum(axis=1, keepdims=True)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def tree_rss(pid: int) -> int:
    """Bytes resident in ``pid`` and its descendants (VmRSS)."""
    total = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
            pending += [int(c) for c in Path(f"/proc/{current}/task/{current}/children").read_text().split()]
        except FileNotFoundError:
            continue
    return total


def build(repo: Path, sleep: float) -> None:
    import importlib.util

    import ferry

    source = repo.parent / "rowsum_model.py"
    source.write_text(MODEL.format(sleep=sleep))
    spec = importlib.util.spec_from_file_location("rowsum_model", source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tensor = {"kind": "tensor", "tensors": [{"name": "x", "shape": [-1, -1]}]}
    ferry.build(module.RowSum, "rowsum", repo, version="1", input_schema=tensor, sample_input=[1.0])


async def burst(address: str, calls: int, width: int) -> tuple[int, int, int]:
    from ferry.grpc import inference_pb2 as pb
    from ferry.grpc import inference_pb2_grpc as pb_grpc

    values = np.arange(width, dtype=np.float64)
    tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP64", shape=[1, width])
    request = pb.ModelInferRequest(model_name="rowsum", inputs=[tensor], raw_input_contents=[values.tobytes()])
    options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        async def one() -> str:
            try:
                answer = await stub.ModelInfer(request, timeout=120)
            except grpc.aio.AioRpcError as exc:
                return str(exc.code().name)
            output = answer.outputs[0]
            got = np.frombuffer(answer.raw_output_contents[0], dtype=np.float64)
            same = output.datatype == "FP64" and got.tolist() == [values.sum()]
            return "OK" if same else f"WRONG {output.datatype} {list(output.shape)} {got[:3]}"

        results = await asyncio.gather(*(one() for _ in range(calls)))
    if wrong := [r for r in results if r.startswith("WRONG")]:
        print(wrong[0])
    return results.count("OK"), results.count("RESOURCE_EXHAUSTED"), len(results) - results.count("OK")


def measure(repo: Path, bound: int, calls: int, width: int) -> dict[str, float]:
    port, grpc_port = free_port(), free_port()
    argv = [sys.executable, "-m", "ferry", "serve", str(repo), "--port", str(port), "--grpc-port", str(grpc_port)]
    argv += ["--probe-port", "0", "--log-level", "warning", "--trust-code", "--max-inflight-bytes", str(bound)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import http.client

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/ready")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.05)
        time.sleep(0.5)
        idle = tree_rss(proc.pid)
        peak, done = idle, threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, tree_rss(proc.pid))
                time.sleep(0.005)

        sampler = threading.Thread(target=sample)
        sampler.start()
        started = time.monotonic()
        ok, exhausted, failed = asyncio.run(burst(f"127.0.0.1:{grpc_port}", calls, width))
        elapsed = time.monotonic() - started
        done.set()
        sampler.join()
        return {"idle": idle, "peak": peak, "ok": ok, "exhausted": exhausted, "failed": failed, "s": elapsed}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--mib", type=float, default=7.9)
    parser.add_argument("--sleep", type=float, default=0.05)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--bounds", type=int, nargs="+", default=[0, 256 * 1024 * 1024])
    args = parser.parse_args()
    width = int(args.mib * 1024 * 1024 / 8)
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        build(repo, args.sleep)
        print(f"{args.calls} concurrent ModelInfer calls of {width * 8 / 2**20:.1f} MiB (raw FP64), row-sum model")
        head = "| --max-inflight-bytes | run | idle RSS (MiB) | peak RSS (MiB) | peak - idle | OK | RESOURCE_EXHAUSTED"
        print(head + " | other | s |")
        print("|---|---|---|---|---|---|---|---|---|")
        for run in range(args.runs):
            for bound in args.bounds:
                r = measure(repo, bound, args.calls, width)
                mib = 2**20
                cells = [bound or "0 (no bound)", run + 1, f"{r['idle'] / mib:.0f}", f"{r['peak'] / mib:.0f}"]
                cells += [f"{(r['peak'] - r['idle']) / mib:.0f}", r["ok"], r["exhausted"]]
                cells += [r["failed"] - r["exhausted"], f"{r['s']:.1f}"]
                print("| " + " | ".join(str(c) for c in cells) + " |", flush=True)


if __name__ == "__main__":
    main()
