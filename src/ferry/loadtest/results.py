"""What a run measured: HDR latency histograms, status and error counts, a per-second timeline, generator lag."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]

LOWEST_US, HIGHEST_US = 1, 3_600_000_000  # 1 microsecond to one hour
NO_RESPONSE = "no response"
LATE_S = 0.010  # a send this far behind its scheduled time counts as the generator falling behind


def new_histogram(digits: int = 3) -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, digits)


def _record(histogram: HdrHistogram, seconds: float) -> None:
    histogram.record_value(min(max(int(seconds * 1e6), LOWEST_US), HIGHEST_US))


@dataclass
class Bucket:
    """One second of the run, by completion time."""

    statuses: Counter[str] = field(default_factory=Counter)
    histogram: HdrHistogram = field(default_factory=lambda: new_histogram(2))

    @property
    def count(self) -> int:
        return sum(self.statuses.values())


@dataclass
class Recorder:
    """Fed by the load loops; everything in seconds on the event loop's monotonic clock."""

    histogram: HdrHistogram = field(default_factory=new_histogram)
    interval: list[float] = field(default_factory=list)  # latencies since the last progress tick; cheap to reset
    status_counts: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    timeline: dict[int, Bucket] = field(default_factory=dict)
    sent: int = 0
    completed: int = 0
    failed: int = 0
    late_sends: int = 0
    max_lag_s: float = 0.0
    send_window_s: float = 0.0
    elapsed_s: float = 0.0

    def note_send(self, lag: float) -> None:
        self.sent += 1
        if lag > LATE_S:
            self.late_sends += 1
        self.max_lag_s = max(self.max_lag_s, lag)

    def record(self, status: int | None, error: str | None, latency: float, since_start: float) -> None:
        self.completed += 1
        _record(self.histogram, latency)
        self.interval.append(latency)
        key = str(status) if status is not None else NO_RESPONSE
        if status is not None:
            self.status_counts[key] += 1
        if error is not None:
            self.failed += 1
            self.errors[error] += 1
        bucket = self.timeline.get(int(since_start))
        if bucket is None:
            bucket = self.timeline[int(since_start)] = Bucket()
        bucket.statuses[key] += 1
        _record(bucket.histogram, latency)

    # -- across processes: plain data in, plain data out -------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "histogram": self.histogram.encode(),
            "status_counts": dict(self.status_counts),
            "errors": dict(self.errors),
            "timeline": {k: [dict(b.statuses), b.histogram.encode()] for k, b in self.timeline.items()},
            "counters": [self.sent, self.completed, self.failed, self.late_sends],
            "max_lag_s": self.max_lag_s,
            "send_window_s": self.send_window_s,
            "elapsed_s": self.elapsed_s,
        }

    def merge(self, state: dict[str, Any]) -> None:
        self.histogram.add(HdrHistogram.decode(state["histogram"]))
        self.status_counts.update(state["status_counts"])
        self.errors.update(state["errors"])
        for second, (statuses, encoded) in state["timeline"].items():
            bucket = self.timeline.setdefault(int(second), Bucket())
            bucket.statuses.update(statuses)
            bucket.histogram.add(HdrHistogram.decode(encoded))
        sent, completed, failed, late = state["counters"]
        self.sent += sent
        self.completed += completed
        self.failed += failed
        self.late_sends += late
        self.max_lag_s = max(self.max_lag_s, state["max_lag_s"])
        self.send_window_s = max(self.send_window_s, state["send_window_s"])
        self.elapsed_s = max(self.elapsed_s, state["elapsed_s"])


def interval_p99_ms(latencies: list[float]) -> float:
    """p99 of the latencies since the last tick: sorting a few thousand floats beats walking an HDR histogram."""
    if not latencies:
        return 0.0
    ordered = sorted(latencies)
    return round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000, 3)


def _ms(histogram: HdrHistogram, percentile: float) -> float:
    return round(histogram.get_value_at_percentile(percentile) / 1000.0, 3) if histogram.get_total_count() else 0.0


def latency_ms(histogram: HdrHistogram) -> dict[str, float]:
    empty = histogram.get_total_count() == 0
    return {
        "p50": _ms(histogram, 50),
        "p90": _ms(histogram, 90),
        "p95": _ms(histogram, 95),
        "p99": _ms(histogram, 99),
        "p999": _ms(histogram, 99.9),
        "max": 0.0 if empty else round(histogram.get_max_value() / 1000.0, 3),
        "mean": 0.0 if empty else round(histogram.get_mean_value() / 1000.0, 3),
    }


def summarize(recorder: Recorder, requested_rate: float | None, info: dict[str, Any]) -> dict[str, Any]:
    """The run as one JSON-ready dict: the keys ``--json`` writes and SLA gates read."""
    r = recorder
    window = r.send_window_s or r.elapsed_s or 1.0
    successes = sum(n for code, n in r.status_counts.items() if code.startswith("2"))
    behind = r.late_sends > max(10, 0.01 * r.sent)
    timeline = []
    for second in range(max(r.timeline, default=-1) + 1):
        bucket = r.timeline.get(second, Bucket())
        timeline.append(
            {
                "t": second,
                "requests": bucket.count,
                "status_counts": dict(bucket.statuses),
                "latency_ms": {k: v for k, v in latency_ms(bucket.histogram).items() if k in ("p50", "p90", "p99")},
            }
        )
    return {
        **info,
        "requested_rate": requested_rate,
        "achieved_rate": round(r.sent / window, 2) if requested_rate is not None else round(r.completed / window, 2),
        "throughput": round(successes / (r.elapsed_s or 1.0), 2),
        "duration_s": round(r.elapsed_s, 3),
        "sent": r.sent,
        "completed": r.completed,
        "successes": successes,
        "success_rate": round(successes / r.completed, 6) if r.completed else 0.0,
        "error_rate": round(1 - successes / r.completed, 6) if r.completed else 1.0,
        "latency_ms": latency_ms(r.histogram),
        "status_counts": dict(sorted(r.status_counts.items())),
        "errors": dict(r.errors.most_common()),
        "generator": {
            "late_sends": r.late_sends,
            "max_lag_ms": round(r.max_lag_s * 1000, 3),
            "behind_schedule": behind,
        },
        "timeline": timeline,
    }
