"""What decoding costs per MiB of body, for every protocol: the iris example (two float features), in process.

    python bench/decode.py [--mib 1 8] [--repeat 3]

Each protocol's codec (``ferry.protocol.codecs.CODECS``) decodes a body of about MIB MiB of the same rows into the
model's batch, as ``DataPlane.infer`` does for a request; the best of REPEAT runs is reported, in ms per MiB
and rows per second. Bodies past ``OFF_LOOP_BYTES`` (64 KiB) are decoded on the data plane's decode thread,
not the event loop, so this is the time that thread takes, and what the loop took before.
"""

from __future__ import annotations

import argparse
import os
import struct
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from ferry.examples import build_examples
from ferry.protocol.codecs import CODECS, HttpMessage
from ferry.serving.registry import ModelRegistry

Body = tuple[bytes, list[tuple[bytes, bytes]]]


def _rows(n: int) -> list[tuple[float, float]]:
    return [((51 + i % 7) / 10, (24 + i % 5) / 10) for i in range(n)]


def native(n: int) -> Body:
    return orjson.dumps([{"length": a, "width": b} for a, b in _rows(n)]), []


def v2_json(n: int) -> Body:
    rows = _rows(n)
    inputs = [{"name": name, "shape": [n], "datatype": "FP64", "data": [r[i] for r in rows]}
              for i, name in enumerate(("length", "width"))]  # fmt: skip
    return orjson.dumps({"inputs": inputs}), []


def v2_binary(n: int) -> Body:
    rows = _rows(n)
    inputs, raw = [], b""
    for i, name in enumerate(("length", "width")):
        data = struct.pack(f"<{n}d", *(r[i] for r in rows))
        inputs.append({"name": name, "shape": [n], "datatype": "FP64", "parameters": {"binary_data_size": len(data)}})
        raw += data
    header = orjson.dumps({"inputs": inputs})
    return header + raw, [(b"inference-header-content-length", str(len(header)).encode())]


def kserve(n: int) -> Body:
    return orjson.dumps({"instances": [{"length": a, "width": b} for a, b in _rows(n)]}), []


def mlflow_split(n: int) -> Body:
    return orjson.dumps({"dataframe_split": {"columns": ["length", "width"], "data": _rows(n)}}), []


def mlflow_records(n: int) -> Body:
    return orjson.dumps({"dataframe_records": [{"length": a, "width": b} for a, b in _rows(n)]}), []


def seldon(n: int) -> Body:
    return orjson.dumps({"data": {"names": ["length", "width"], "ndarray": _rows(n)}}), []


PROTOCOLS: dict[str, tuple[str, Callable[[int], Body]]] = {
    "native (records)": ("native", native),
    "Open Inference v2, JSON": ("v2", v2_json),
    "Open Inference v2, binary": ("v2", v2_binary),
    "KServe v1": ("kserve", kserve),
    "MLflow dataframe_split": ("mlflow", mlflow_split),
    "MLflow dataframe_records": ("mlflow", mlflow_records),
    "Seldon ndarray": ("seldon", seldon),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=float, nargs="+", default=[1.0, 8.0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        build_examples(repo, ["iris"])
        registry = ModelRegistry(repo)
        registry.load_all()
        handle = registry.get("iris")
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        print(f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs, {when}")
        print("| protocol | body | rows | decode ms | ms per MiB | rows/s |\n|---|---:|---:|---:|---:|---:|")
        for title, (name, make) in PROTOCOLS.items():
            codec = CODECS[name]
            for mib in args.mib:
                per_row = len(make(1000)[0]) / 1000
                rows = int(mib * 2**20 / per_row)
                body, headers = make(rows)
                best = float("inf")
                for _ in range(args.repeat):
                    started = time.perf_counter()
                    codec.decode(HttpMessage(body, headers), handle)
                    best = min(best, time.perf_counter() - started)
                size = len(body) / 2**20
                print(f"| {title} | {size:.1f} MiB | {rows:,} | {best * 1000:,.0f} | {best * 1000 / size:,.0f} "
                      f"| {rows / best:,.0f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
