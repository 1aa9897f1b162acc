"""Prometheus metrics on a registry the app owns (never the global one), right across worker processes.

With ``ferry serve --workers N`` the CLI makes one folder per server and names it in
``PROMETHEUS_MULTIPROC_DIR`` before the workers start: every worker then writes its samples to
memory-mapped files there, and ``/metrics`` on any worker reads them all (prometheus_client's
multiprocess mode). Gauges that mirror live state (queue depth, rows in flight, model state,
memory) are sampled into those files by ``refresh``, about once a second and at every scrape.

Labels are bounded: model names and versions the registry holds, route templates, protocols
and status codes; never a request ID, a user ID or a raw path.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.metrics_core import Metric

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
MODEL_STATES = ("LOADING", "READY", "FAILED", "UNLOADED")
SWEEP_S = 5.0  # how often a worker looks for the gauge files of dead workers

# Sources of live gauge values, read at refresh: (model, version) -> (queue depth, rows in flight).
LiveSource = Callable[[], tuple[int, int]]


class Metrics:
    def __init__(self, multiprocess_dir: Path | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir
        self.registry = CollectorRegistry()
        self._live: dict[tuple[str, str], LiveSource] = {}
        self._cpu_seen = 0.0
        self._states: set[tuple[str, str]] = set()
        self._last_sweep = 0.0
        r = self.registry
        self.requests = Counter(
            "ferry_requests_total",
            "Requests by model, route, protocol and status code",
            ["model", "route", "protocol", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "ferry_request_duration_seconds",
            "Request latency by model and route, from the first byte read to the last byte sent",
            ["model", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.predictions = Counter(
            "ferry_predict_calls_total", "Calls into the shared predict path", ["model", "version"], registry=r
        )
        self.rows = Counter("ferry_predict_rows_total", "Rows predicted", ["model", "version"], registry=r)
        self.errors = Counter("ferry_errors_total", "Errors by model and error code", ["model", "code"], registry=r)

        self.batch_size = Histogram(
            "ferry_batch_size_rows",
            "Rows per model call after adaptive batching",
            ["model", "version"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            registry=r,
        )
        self.explain_batch_size = Histogram(
            "ferry_explain_batch_size_rows",
            "Rows per explanation call after adaptive batching (concurrent explain requests share one call)",
            ["model", "version"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            registry=r,
        )
        self.queue_wait = Histogram(
            "ferry_queue_wait_seconds",
            "Time a batch's oldest request waited for the batch to start",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.compute = Histogram(
            "ferry_compute_seconds",
            "Time one model call took on a whole batch",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

        self.queue_depth = Gauge(
            "ferry_queue_depth",
            "Requests waiting for a batch",
            ["model", "version"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.in_flight = Gauge(
            "ferry_in_flight_rows",
            "Rows in the batch being computed",
            ["model", "version"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.rejections = Counter(
            "ferry_rejections_total", "Requests refused at admission (queue full)", ["model", "version"], registry=r
        )
        self.deadline_misses = Counter(
            "ferry_deadline_misses_total", "Requests not served within their deadline", ["model", "version"], registry=r
        )

        self.model_loads = Counter(
            "ferry_model_loads_total",
            "Model version loads per worker, every one, by kind (load, or reload of a version loaded before: "
            "an evicted one back, a reload) and result (ready or failed)",
            ["model", "version", "kind", "result"],
            registry=r,
        )
        self.model_evictions = Counter(
            "ferry_model_evictions_total",
            "Loaded model versions unloaded to fit --max-memory (least recently used first), per worker",
            ["model", "version"],
            registry=r,
        )
        self.model_state = Gauge(
            "ferry_model_state",
            "1 for the state a model version is in (LOADING, READY, FAILED, UNLOADED), else 0; the most of any worker",
            ["model", "version", "state"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.model_bytes = Gauge(
            "ferry_model_loaded_bytes",
            "Estimated memory of a loaded model version (its artifacts), 0 when not loaded; summed over workers",
            ["model", "version"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.models_bytes = Gauge(
            "ferry_models_loaded_bytes",
            "Estimated memory of every loaded model version; --max-memory bounds it per worker",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.prediction_log_records = Counter(
            "ferry_prediction_log_records_total",
            "Prediction log records, by outcome (written; dropped: the buffer was full; failed: the write failed)",
            ["model", "outcome"],
            registry=r,
        )

        self.memory = Gauge(
            "ferry_process_resident_memory_bytes",
            "Resident memory of the worker processes, summed",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.cpu = Counter("ferry_process_cpu_seconds_total", "CPU time of the worker processes, summed", registry=r)
        self.workers = Gauge("ferry_workers", "Worker processes alive", multiprocess_mode="livesum", registry=r)
        self.workers.set(1)
        if multiprocess_dir is None:
            ProcessCollector(registry=r)  # the standard process_* metrics, for the one process there is

    @classmethod
    def from_env(cls) -> Metrics:
        """Multiprocess mode when the CLI named a folder in ``PROMETHEUS_MULTIPROC_DIR``."""
        folder = os.environ.get(MULTIPROC_ENV)
        return cls(Path(folder) if folder else None)

    # -- live gauges --------------------------------------------------------------------------------
    def track(self, model: str, version: str, source: LiveSource) -> None:
        """Sample (queue depth, rows in flight) of one model version at every refresh."""
        self._live[(model, version)] = source

    def untrack(self, model: str, version: str) -> None:
        """Stop sampling a model version's live gauges (it was unloaded)."""
        if self._live.pop((model, version), None) is not None:
            self.queue_depth.remove(model, version)
            self.in_flight.remove(model, version)

    def set_states(self, states: Iterable[tuple[str, str, str, int]]) -> None:
        """The state and loaded bytes of every (model, version); versions no longer held are removed."""
        held: set[tuple[str, str]] = set()
        total = 0
        for model, version, state, loaded in states:
            held.add((model, version))
            for name in MODEL_STATES:
                self.model_state.labels(model, version, name).set(1.0 if name == state else 0.0)
            self.model_bytes.labels(model, version).set(loaded)
            total += loaded
        self.models_bytes.set(total)
        for model, version in self._states - held:
            for name in MODEL_STATES:
                self.model_state.remove(model, version, name)
            self.model_bytes.remove(model, version)
        self._states = held
        for key in list(self._live):
            if key not in held:
                del self._live[key]
                self.queue_depth.remove(*key)
                self.in_flight.remove(*key)

    def refresh(self) -> None:
        """Copy live values (queue depth, rows in flight, memory, CPU) into the gauges."""
        for (model, version), source in self._live.items():
            depth, rows = source()
            self.queue_depth.labels(model, version).set(depth)
            self.in_flight.labels(model, version).set(rows)
        self.memory.set(_resident_bytes())
        times = os.times()
        cpu = times.user + times.system
        if cpu > self._cpu_seen:
            self.cpu.inc(cpu - self._cpu_seen)
            self._cpu_seen = cpu
        now = time.monotonic()
        if self.multiprocess_dir is not None and now - self._last_sweep > SWEEP_S:
            self._last_sweep = now
            _forget_dead_workers(self.multiprocess_dir)

    # -- exposition ---------------------------------------------------------------------------------
    def collect(self) -> list[Metric]:
        """Every metric family, summed over all workers in multiprocess mode."""
        self.refresh()
        return list(self._source().collect())

    def render(self) -> bytes:
        self.refresh()
        return generate_latest(self._source())

    def _source(self) -> CollectorRegistry:
        if self.multiprocess_dir is None:
            return self.registry
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(self.multiprocess_dir))  # type: ignore[no-untyped-call]
        return registry


def _resident_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # peak, in KiB on Linux


def _forget_dead_workers(folder: Path) -> None:
    """Drop the live gauges of worker processes that have died (a restarted worker gets a new pid)."""
    from prometheus_client import multiprocess

    pids = {p.stem.rsplit("_", 1)[-1] for p in folder.glob("gauge_live*_*.db")}
    for pid in pids:
        if pid.isdigit() and not _alive(int(pid)):
            multiprocess.mark_process_dead(int(pid), str(folder))  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def multiprocess_folder(workers: int) -> Iterator[Path | None]:
    """With several workers, a fresh metrics folder for this server, named in the environment the workers inherit.

    Made before the workers start (each reads the variable when it imports prometheus_client) and
    removed at exit, so counts never carry over from an earlier run.
    """
    if workers <= 1:
        yield None
        return
    folder = Path(tempfile.mkdtemp(prefix="ferry-metrics-"))
    previous = os.environ.get(MULTIPROC_ENV)
    os.environ[MULTIPROC_ENV] = str(folder)
    try:
        yield folder
    finally:
        if previous is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = previous
        shutil.rmtree(folder, ignore_errors=True)
