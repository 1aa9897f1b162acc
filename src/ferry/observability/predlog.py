"""The prediction log: sampled inputs and outputs as JSON lines, for monitoring and retraining.

A model opts in with ``prediction_log:`` in its manifest; the server names where records go
(``--prediction-log FILE``, or ``-`` for stdout). A request only samples and enqueues (its batch
and prediction, already built); a writer thread redacts, serialises and writes. The buffer is
bounded: when it is full a record is dropped and counted in ``ferry_prediction_log_records_total``
(outcome ``dropped``), so logging never slows or blocks a request. A write that fails (a full disk)
loses its records, counted as ``failed``, and is cut back whole, so the file stays valid JSON lines;
the failure is logged once, then at most once a minute.

Rotation is by size: past ``max_bytes`` the file becomes ``FILE.1`` (``FILE.1`` becomes ``FILE.2``,
and so on up to ``backups``). Worker processes append to the same file and rotate under a lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import queue
import random
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson

from ferry.bundle.manifest import Manifest
from ferry.observability.context import current_request_id
from ferry.runtimes import Prediction
from ferry.serving.metrics import Metrics
from ferry.serving.registry import ModelHandle

logger = logging.getLogger("ferry.prediction_log")

REDACTED = "[redacted]"
STDOUT = "-"


@dataclass
class _Plan:
    """How one loaded model version is logged, worked out once."""

    manifest: Manifest
    sample_rate: float
    redact: frozenset[str]
    written: Any
    dropped: Any
    failed: Any


_Entry = tuple[float, str, str, str | None, float, Any, Prediction, _Plan]


class PredictionLog:
    def __init__(
        self, destination: str, metrics: Metrics, max_bytes: int = 64 << 20, backups: int = 3, buffer: int = 10_000
    ) -> None:
        self.destination = destination
        self.metrics = metrics
        self.max_bytes = max_bytes
        self.backups = backups
        self._queue: queue.Queue[_Entry | None] = queue.Queue(maxsize=buffer)
        self._plans: dict[int, tuple[Manifest, _Plan | None]] = {}
        self._fd: int | None = None
        self._lock: IO[bytes] | None = None
        self._inode = 0
        self._failures = _FailureReport(destination)
        self._thread = threading.Thread(target=self._write_loop, name="ferry-prediction-log", daemon=True)
        self._thread.start()

    # -- on the request path: cheap, never blocks ----------------------------------------------------
    def record(self, handle: ModelHandle, batch: Any, prediction: Prediction, latency_s: float) -> None:
        assert handle.model is not None
        manifest = handle.model.manifest
        cached = self._plans.get(id(manifest))
        if cached is None or cached[0] is not manifest:
            cached = self._plans[id(manifest)] = (manifest, self._plan(handle.name, manifest))
        plan = cached[1]
        if plan is None:
            return
        if plan.sample_rate < 1.0 and random.random() >= plan.sample_rate:
            return
        entry = (time.time(), handle.name, handle.version, current_request_id(), latency_s, batch, prediction, plan)
        try:
            self._queue.put_nowait(entry)
        except queue.Full:
            plan.dropped.inc()

    def _plan(self, name: str, manifest: Manifest) -> _Plan | None:
        spec = manifest.prediction_log
        if spec is None or spec.sample_rate <= 0:
            return None
        counter = self.metrics.prediction_log_records
        return _Plan(
            manifest,
            spec.sample_rate,
            frozenset(spec.redact),
            counter.labels(name, "written"),
            counter.labels(name, "dropped"),
            counter.labels(name, "failed"),
        )

    # -- on the writer thread ------------------------------------------------------------------------
    def _write_loop(self) -> None:
        while True:
            entry = self._queue.get()
            lines, plans = [], []
            while entry is not None:
                try:
                    lines.append(render(entry))
                    plans.append(entry[7])
                except Exception:  # one odd record must not stop the log
                    logger.exception("could not serialise a prediction log record")
                try:
                    entry = self._queue.get_nowait()
                except queue.Empty:
                    break
            if lines:
                self._write_counted(b"".join(lines), plans)
            if entry is None:
                return

    def _write_counted(self, data: bytes, plans: list[_Plan]) -> None:
        """Write a batch of records; count them written only once they are, or failed if not."""
        try:
            self._write(data)
        except OSError as exc:  # a full disk, say: the records are lost, the requests are not
            for plan in plans:
                plan.failed.inc()
            self._failures.failed(len(plans), exc)
            return
        for plan in plans:
            plan.written.inc()
        self._failures.recovered()

    def _write(self, data: bytes) -> None:
        if self.destination == STDOUT:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
            return
        fd = self._open()
        with self._locked():
            _append_whole(fd, data)
            if os.fstat(fd).st_size >= self.max_bytes:
                self._rotate()

    def _open(self) -> int:
        path = Path(self.destination)
        try:
            current = path.stat().st_ino
        except FileNotFoundError:
            current = -1
        if self._fd is None or current != self._inode:  # another worker rotated it
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._inode = os.fstat(self._fd).st_ino
        return self._fd

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One lock for appends and rotation across workers, so a failed append can be cut back whole."""
        if self._lock is None:
            self._lock = open(f"{self.destination}.lock", "ab")  # noqa: SIM115  (kept open across writes)
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock, fcntl.LOCK_UN)

    def _rotate(self) -> None:
        """Past ``max_bytes``: FILE -> FILE.1 -> FILE.2 ...; called with the lock held."""
        path = Path(self.destination)
        try:
            stat = path.stat()
        except FileNotFoundError:
            return
        if stat.st_ino != self._inode or stat.st_size < self.max_bytes:
            return  # another worker rotated it first
        for index in range(self.backups - 1, 0, -1):
            older = Path(f"{path}.{index}")
            if older.exists():
                older.replace(f"{path}.{index + 1}")
        if self.backups > 0:
            path.replace(f"{path}.1")
        else:
            path.unlink()

    def close(self, timeout_s: float = 5.0) -> None:
        """Write what is buffered (within ``timeout_s``), then stop the writer."""
        try:
            self._queue.put(None, timeout=timeout_s)
        except queue.Full:
            return
        self._thread.join(timeout_s)
        if self._fd is not None:
            os.close(self._fd)
        if self._lock is not None:
            self._lock.close()


def _append_whole(fd: int, data: bytes) -> None:
    """Append all of ``data`` or none of it: a write cut short (ENOSPC midway) is truncated back, so the
    file never holds half a record and stays valid JSON lines for ``ferry monitor``."""
    start = os.fstat(fd).st_size
    written = 0
    try:
        while written < len(data):
            written += os.write(fd, data[written:])
    except OSError:
        if written:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
        raise


class _FailureReport:
    """Logs a failing prediction log at most once a minute, with the records lost, even while it flaps
    (a full disk may still take a small record now and then); and, once after each report, its recovery."""

    INTERVAL_S = 60.0

    def __init__(self, destination: str) -> None:
        self.destination = destination
        self.lost = 0  # records lost since the last message
        self.last_report = -self.INTERVAL_S
        self.reported = False  # a failure was logged and its recovery not yet

    def failed(self, records: int, exc: OSError) -> None:
        self.lost += records
        now = time.monotonic()
        if now - self.last_report >= self.INTERVAL_S:
            logger.error(
                "could not write the prediction log to %s: %s; %d record(s) lost (reported at most once a minute)",
                self.destination,
                exc.strerror or exc,
                self.lost,
            )
            self.lost, self.last_report, self.reported = 0, now, True

    def recovered(self) -> None:
        if self.reported:
            logger.warning(
                "the prediction log writes to %s again; %d more record(s) were lost", self.destination, self.lost
            )
            self.lost, self.reported = 0, False


def render(entry: _Entry) -> bytes:
    """One JSON line: time, model, version, request ID, latency, and the (redacted) inputs and outputs."""
    created, name, version, request_id, latency_s, batch, prediction, plan = entry
    record: dict[str, Any] = {
        "ts": datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds"),
        "model": name,
        "version": version,
        "request_id": request_id,
        "latency_ms": round(latency_s * 1000.0, 3),
        "inputs": _inputs(batch, plan),
        "outputs": _plain(prediction.values),
    }
    if prediction.probabilities is not None:
        record["probabilities"] = _plain(prediction.probabilities)
    return orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY, default=str) + b"\n"


def _inputs(batch: Any, plan: _Plan) -> Any:
    schema = plan.manifest.input
    if schema.kind == "features":
        names = [f.name for f in schema.features]
        rows = batch.tolist() if isinstance(batch, np.ndarray) else list(batch)
        return [{n: (REDACTED if n in plan.redact else v) for n, v in zip(names, row, strict=False)} for row in rows]
    if schema.kind in ("text", "image"):
        if schema.field in plan.redact:
            return [{schema.field: REDACTED} for _ in range(len(batch))]
        if schema.kind == "image":  # pixels are not worth a log line; their shape is
            return [{"shape": list(np.shape(item))} for item in batch]
        return [{schema.field: item} for item in batch]
    return {"shape": list(np.shape(batch))}


def _plain(values: Any) -> Any:
    return values.tolist() if isinstance(values, np.ndarray) else values
