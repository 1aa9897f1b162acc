"""Contract testing: inputs generated from the model's own metadata, answers checked against its declared output.

Valid inputs must get a 200 whose output matches the schema; invalid ones a 4xx with a JSON error.
Never a 5xx, and never a hang.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import select
import socket
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from ferry.bundle.expect import expectation_problem
from ferry.errors import LoadTestError, LoadTestUsage
from ferry.loadtest.generate import invalid_records, valid_record
from ferry.loadtest.protocols import Adapter, make_adapter
from ferry.loadtest.schedule import parse_duration
from ferry.loadtest.schema import DTYPE_TO_V2, ModelSchema, fetch_schema, v2_inputs
from ferry.settings import LoadTestSettings

OVERSIZE_BYTES = 9 * 1024 * 1024  # above Ferry's default 8 MiB body limit


@dataclass
class CaseResult:
    name: str
    expect: str  # "200" or "4xx"
    passed: bool
    status: int | None
    detail: str
    example: str


def run_check(
    url: str,
    model: str | None = None,
    protocol: str = LoadTestSettings.protocol,
    valid_samples: int = 5,
    oversize_bytes: int = OVERSIZE_BYTES,
    timeout: float = parse_duration(LoadTestSettings.timeout),
    seed: int = 0,
) -> tuple[ModelSchema, list[CaseResult]]:
    base = url.rstrip("/")
    if protocol == "grpc":
        raise LoadTestUsage("ferry check speaks the HTTP protocols (native, v2, v1, seldon); gRPC is for loadtest")
    schema = fetch_schema(base, model, prefer="v2" if protocol == "v2" else "native")
    if protocol == "native" and schema.source == "v2":
        protocol = "v2"  # a plain OIP v2 server: speak its protocol
    adapter = make_adapter(protocol, schema, v2_inputs(base, schema.name) if protocol == "v2" else None)
    target = base + adapter.path()
    rng = random.Random(seed)
    results: list[CaseResult] = []
    for i in range(valid_samples):
        body = adapter.encode(valid_record(schema, rng))
        results.append(_expect_ok(f"valid input #{i + 1}", target, body, adapter, timeout))
    if schema.sample_input is not None:
        expected = schema.expected_output if adapter.protocol == "native" else None
        body = adapter.encode(schema.sample_input)
        results.append(_expect_ok("the model's sample input", target, body, adapter, timeout, expected))
    good = adapter.encode(valid_record(schema, rng))
    raw_cases: list[tuple[str, bytes]] = [
        (name, adapter.encode(record)) for name, record in invalid_records(schema, rng)
    ]
    raw_cases += [
        ("malformed JSON (truncated)", good[: max(1, len(good) // 2)]),
        ("malformed JSON (not JSON at all)", b"this is not json"),
        ("empty body", b""),
        (f"oversized payload ({oversize_bytes // 1024 // 1024} MiB)", good + b" " * oversize_bytes),
    ]
    results += [_expect_client_error(name, target, body, timeout) for name, body in raw_cases]
    return schema, results


def _post(url: str, body: bytes, timeout: float) -> tuple[int | None, bytes, str]:
    if len(body) > 1024 * 1024 and url.startswith("http://"):
        return _post_large(url, body, timeout)
    request = urllib.request.Request(url, data=body, method="POST", headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read(), ""
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), ""
    except TimeoutError:
        return None, b"", f"no answer within {timeout:g}s (a hang)"
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, TimeoutError):
            return None, b"", f"no answer within {timeout:g}s (a hang)"
        return None, b"", f"connection failed: {reason}"


def _post_large(url: str, body: bytes, timeout: float) -> tuple[int | None, bytes, str]:
    """POST with ``Expect: 100-continue``, so a server that refuses the size can say so before the body is sent.

    A server that answers early and closes would otherwise reset the connection under a plain client,
    losing its 413.
    """
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    head = (
        f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
    ).encode()
    received = b""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(head)
            readable, _, _ = select.select([sock], [], [], 2.0)
            if readable:
                received = sock.recv(65536)
            if not received or received.startswith(b"HTTP/1.1 100"):
                received = b""
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    sock.sendall(body)
                received = _read_all(sock)
            else:
                received += _read_all(sock)
    except TimeoutError:
        return None, b"", f"no answer within {timeout:g}s (a hang)"
    except OSError as exc:
        if not received:
            return None, b"", f"connection failed: {exc}"
    return _parse_response(received)


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _parse_response(raw: bytes) -> tuple[int | None, bytes, str]:
    while raw.startswith(b"HTTP/1.1 100"):
        raw = raw.partition(b"\r\n\r\n")[2]
    head, _, payload = raw.partition(b"\r\n\r\n")
    try:
        status = int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return None, b"", "the connection closed without an HTTP response"
    if b"transfer-encoding: chunked" in head.lower():
        payload = _dechunk(payload)
    return status, payload, ""


def _dechunk(data: bytes) -> bytes:
    out = []
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out.append(rest[:size])
        data = rest[size + 2 :]
    return b"".join(out)


def _example(body: bytes) -> str:
    text = body[:160].decode("utf-8", errors="replace")
    return text + (f"... ({len(body):,} bytes)" if len(body) > 160 else "")


def _expect_ok(name: str, url: str, body: bytes, adapter: Adapter, timeout: float, expected: Any = None) -> CaseResult:
    """A 200 whose output fits the schema, and is ``expected`` (a native answer) where that is given."""
    status, answer, problem = _post(url, body, timeout)
    if not problem and status != 200:
        problem = f"expected 200, got {status}: {answer[:200].decode(errors='replace')}"
    if not problem:
        problem = output_problem(answer, adapter)
    detail = "output matches the schema"
    if not problem and expected is not None:
        parsed = json.loads(answer)
        got = parsed.get("prediction", parsed.get("predictions")) if isinstance(parsed, dict) else parsed
        wrong = expectation_problem(expected, got)
        problem = f"the sample input answers wrong: {wrong}" if wrong else ""
        detail = f"answers the expected {json.dumps(got)[:80]}"
    return CaseResult(name, "200", not problem, status, problem or detail, _example(body))


def _expect_client_error(name: str, url: str, body: bytes, timeout: float) -> CaseResult:
    status, answer, problem = _post(url, body, timeout)
    if not problem and status is not None and not 400 <= status < 500:
        problem = f"expected a 4xx, got {status}"
    if not problem:
        try:
            parsed = json.loads(answer)
            if not isinstance(parsed, dict) or not parsed:
                problem = f"the {status} body is JSON but not an error object"
        except ValueError:
            problem = f"the {status} body is not JSON: {answer[:80].decode(errors='replace')!r}"
    detail = problem or f"{status} {json.loads(answer).get('error', '')}"[:160]
    return CaseResult(name, "4xx", not problem, status, detail, _example(body))


# -- output against the declared schema -------------------------------------------------------------
def output_problem(answer: bytes, adapter: Adapter) -> str:
    try:
        body = json.loads(answer)
    except ValueError:
        return "the 200 body is not JSON"
    schema = adapter.schema
    if adapter.protocol == "v2" and schema.v2_outputs:
        problem = _v2_outputs_problem(body, schema)
        if problem:
            return problem
    try:
        values = adapter.predictions(body)
    except (KeyError, TypeError, IndexError, AttributeError):
        return f"no predictions where {adapter.protocol} puts them: {answer[:120].decode(errors='replace')}"
    if len(values) != 1:
        return f"sent one record, got {len(values)} predictions"
    if adapter.protocol == "seldon" and _seldon_probabilities(body, schema):
        return _probabilities_problem(values[0], schema.labels or [])
    return value_problem(values[0], schema)


def _seldon_probabilities(body: Any, schema: ModelSchema) -> bool:
    """A classifier answers Seldon with its probabilities, named by class (as Seldon's own servers do)."""
    return schema.output_kind == "label" and bool(schema.labels) and body["data"].get("names") == schema.labels


def _probabilities_problem(value: Any, labels: list[str]) -> str:
    if not isinstance(value, list) or len(value) != len(labels):
        return f"probabilities {value!r} are not one per class {labels}"
    if any(isinstance(p, bool) or not isinstance(p, int | float) or not 0 <= p <= 1 for p in value):
        return f"probabilities {value!r} are not numbers between 0 and 1"
    if abs(sum(value) - 1) > 1e-6:
        return f"probabilities {value!r} do not sum to 1"
    return ""


def value_problem(value: Any, schema: ModelSchema) -> str:
    kind = schema.output_kind
    if kind == "label":
        if (
            schema.labels
            and value not in schema.labels
            and not (isinstance(value, int) and 0 <= value < len(schema.labels))
        ):
            return f"prediction {value!r} is not one of the labels {schema.labels}"
        return ""
    if kind == "number":
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return f"prediction {value!r} is not a finite number"
        if schema.output_min is not None and value < schema.output_min:
            return f"prediction {value} is below the declared min {schema.output_min}"
        if schema.output_max is not None and value > schema.output_max:
            return f"prediction {value} is above the declared max {schema.output_max}"
        return ""
    return _shape_problem(value, schema.output_shape[1:], "prediction")


def _shape_problem(value: Any, shape: list[int], where: str) -> str:
    if not shape:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            return f"{where} is {type(value).__name__}, expected a scalar"
        return ""
    if not isinstance(value, list):
        return f"{where} is {type(value).__name__}, expected an array of shape {shape}"
    if shape[0] >= 0 and len(value) != shape[0]:
        return f"{where} has {len(value)} elements, the schema declares {shape[0]}"
    for i, item in enumerate(value):
        problem = _shape_problem(item, shape[1:], f"{where}[{i}]")
        if problem:
            return problem
    return ""


def _v2_outputs_problem(body: Any, schema: ModelSchema) -> str:
    outputs = body.get("outputs") if isinstance(body, dict) else None
    if not isinstance(outputs, list) or not outputs:
        return "the v2 response has no outputs"
    declared = {o.name: o for o in schema.v2_outputs}
    for out in outputs:
        spec = declared.get(out.get("name"))
        if spec is None:
            return f"output '{out.get('name')}' is not declared in the metadata"
        shape, data = out.get("shape"), out.get("data")
        if out.get("datatype") != DTYPE_TO_V2.get(spec.dtype, out.get("datatype")):
            return f"output '{spec.name}' has datatype {out.get('datatype')}, declared {DTYPE_TO_V2[spec.dtype]}"
        if not isinstance(shape, list) or len(shape) != len(spec.shape):
            return f"output '{spec.name}' has shape {shape}, declared {spec.shape}"
        if any(d >= 0 and d != s for d, s in zip(spec.shape, shape, strict=True)):
            return f"output '{spec.name}' has shape {shape}, declared {spec.shape}"
        if isinstance(data, list) and len(data) != math.prod(shape):
            return f"output '{spec.name}' has {len(data)} values for shape {shape}"
    return ""


def require_passed(results: list[CaseResult]) -> None:
    failed = [r for r in results if not r.passed]
    if failed:
        raise LoadTestError(f"{len(failed)} of {len(results)} contract checks failed")
