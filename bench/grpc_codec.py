"""What a ModelInfer call's codec costs against v2 REST's, per call, in process: iris, 1 and 100 rows.

    python bench/grpc_codec.py [--repeat 2000] [--rounds 11]

gRPC: the message parsed (``codec.parse_infer``), measured (``dataplane._size``), decoded into the model's
batch and the reply encoded to wire bytes, as a call does; REST: the same request as v2 JSON through
``V2RestCodec``. The model's own prediction (one per size) is shared, so only the codecs differ. Each figure
is the best of ROUNDS rounds of REPEAT calls, in µs per call.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from ferry.examples import build_examples
from ferry.grpc import inference_pb2 as pb
from ferry.grpc.codec import GRPC_CODEC, parse_infer
from ferry.protocol.codecs import CODECS, HttpMessage
from ferry.serving.dataplane import _size
from ferry.serving.registry import ModelRegistry


def _best(work: Callable[[], Any], repeat: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(repeat):
            work()
        best = min(best, (time.perf_counter() - started) / repeat)
    return best * 1e6


def _row(handle: Any, rows: int, repeat: int, rounds: int) -> list[float]:
    """gRPC decode, REST decode, gRPC encode, REST encode: µs per call for ``rows`` rows."""
    rest = CODECS["v2"]
    values = [1.4, 0.2] * rows
    request = pb.ModelInferRequest(model_name="iris")
    request.inputs.add(name="input", datatype="FP64", shape=[rows, 2]).contents.fp64_contents.extend(values)
    message = request.SerializeToString()
    text = {"inputs": [{"name": "input", "datatype": "FP64", "shape": [rows, 2], "data": values}]}
    body = HttpMessage(orjson.dumps(text), [(b"content-type", b"application/json")])

    def grpc_decode() -> Any:
        parsed = parse_infer(message)
        _size(parsed)
        return GRPC_CODEC.decode(parsed, handle)

    batch, grpc_context = grpc_decode()
    prediction = handle.model.runtime.predict(batch)
    _, rest_context = rest.decode(body, handle)

    def grpc_encode() -> Any:
        reply = GRPC_CODEC.encode(prediction, handle, grpc_context)
        return reply if isinstance(reply, bytes) else reply.SerializeToString()

    return [
        _best(grpc_decode, repeat, rounds),
        _best(lambda: rest.decode(body, handle), repeat, rounds),
        _best(grpc_encode, repeat, rounds),
        _best(lambda: rest.encode(prediction, handle, rest_context), repeat, rounds),
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=11)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        build_examples(repo, ["iris"])
        registry = ModelRegistry(repo)
        registry.load_all()
        handle = registry.get("iris")
        print(f"load average {os.getloadavg()[0]:.2f}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
        print("| rows | gRPC decode µs | REST decode µs | gRPC encode µs | REST encode µs |")
        print("|---:|---:|---:|---:|---:|")
        for rows in (1, 100):
            figures = _row(handle, rows, args.repeat, args.rounds)
            print(f"| {rows} | " + " | ".join(f"{f:.1f}" for f in figures) + " |", flush=True)


if __name__ == "__main__":
    main()
