"""The common ModelInferResponse as ``ReplyWriter`` writes its wire bytes: protobuf parses them to the message
protobuf's own objects build (``encode_columns``), for every kind of column it writes, and it leaves the rest
to protobuf."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from ferry.grpc import inference_pb2 as pb
from ferry.grpc.codec import ReplyWriter, encode_columns
from ferry.protocol import v2

HANDLE: Any = SimpleNamespace(name="iris", version="1")
COLUMNS: dict[str, list[v2.Column]] = {
    "labels": [("label", "BYTES", [3], ["setosa", "virginica", "setosa"])],
    "unicode and long labels": [("label", "BYTES", [2], ["映像がとても美しい", "x" * 300])],
    "probabilities": [
        ("label", "BYTES", [2], ["a", "b"]),
        ("probabilities", "FP64", [2, 3], np.array([[0.1, 0.2, 0.7], [np.nan, -0.0, 1e308]])),
    ],
    "float32 scores": [("predict", "FP32", [4], np.array([1.5, -2.25, 3e38, 0.0], dtype=np.float32))],
    "booleans": [("predict", "BOOL", [3], np.array([True, False, True]))],
    "a big batch": [("predict", "FP64", [1000, 1], np.arange(1000, dtype=np.float64).reshape(1000, 1))],
}


@pytest.mark.parametrize("case", list(COLUMNS))
@pytest.mark.parametrize("request_id", [None, "req-7"])
def test_written_bytes_parse_to_protobufs_own_reply(case: str, request_id: str | None) -> None:
    request = v2.InferRequest([], request_id, {}, None)
    written = ReplyWriter().write(request, HANDLE, COLUMNS[case])
    assert written is not None
    assert pb.ModelInferResponse.FromString(written) == encode_columns(request, HANDLE, COLUMNS[case])


def test_what_it_does_not_write_is_left_to_protobuf() -> None:
    request = v2.InferRequest([], None, {}, None)
    writer = ReplyWriter()
    assert writer.write(request, HANDLE, [("predict", "INT64", [2], np.array([1, -2]))]) is None
    assert writer.write(request, HANDLE, [("label", "BYTES", [1], [b"raw bytes"])]) is None
    assert writer.write(request, HANDLE, [("label", "BYTES", [0], [])]) is None
    unversioned: Any = SimpleNamespace(name="m", version="")
    labels: list[v2.Column] = [("label", "BYTES", [1], ["x"])]
    written = writer.write(request, unversioned, labels)
    assert written is not None
    assert pb.ModelInferResponse.FromString(written) == encode_columns(request, unversioned, labels)
