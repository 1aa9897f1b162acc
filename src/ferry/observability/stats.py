"""Live numbers for the web console: request rate, p50/p99 latency and error rate per model.

Computed from the Prometheus metrics (so, across every worker) by differencing two snapshots:
the one taken now and the oldest one kept within ``window_s``. Nothing is added to the hot path.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ferry.serving.metrics import Metrics

PREDICT_ROUTE_SUFFIXES = ("predict", "infer", "predictions", "ModelInfer")


def is_predict_route(route: str) -> bool:
    return route.endswith(PREDICT_ROUTE_SUFFIXES) or route.startswith("compat:")


@dataclass
class ModelCounts:
    requests: float = 0.0
    errors: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)  # upper bound -> cumulative count


Snapshot = dict[str, ModelCounts]


def snapshot(metrics: Metrics) -> Snapshot:
    """Cumulative predict requests, errors and latency buckets per model, summed over routes and workers."""
    counts: Snapshot = {}
    for family in metrics.collect():
        if family.name not in ("ferry_requests", "ferry_request_duration_seconds"):
            continue
        for sample in family.samples:
            labels = sample.labels
            if not is_predict_route(labels.get("route", "")) or labels.get("model") == "_unknown":
                continue
            model = counts.setdefault(labels["model"], ModelCounts())
            if sample.name == "ferry_requests_total":
                model.requests += sample.value
                if not labels.get("status", "").startswith("2"):
                    model.errors += sample.value
            elif sample.name == "ferry_request_duration_seconds_bucket":
                bound = float(labels["le"])
                model.buckets[bound] = model.buckets.get(bound, 0.0) + sample.value
    return counts


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Like PromQL's ``histogram_quantile``: linear interpolation inside the bucket that holds rank q."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside > 0 else 0.0)
        lower, below = bound, count
    return lower


class StatsWindow:
    """Rates over the last ``window_s`` seconds, from snapshots taken when the console asks."""

    def __init__(self, metrics: Metrics, window_s: float = 10.0) -> None:
        self.metrics = metrics
        self.window_s = window_s
        self._history: deque[tuple[float, Snapshot]] = deque()

    def stats(self) -> dict[str, Any]:
        now = time.monotonic()
        current = snapshot(self.metrics)
        while len(self._history) > 1 and now - self._history[1][0] >= self.window_s:
            self._history.popleft()
        base_time, base = self._history[0] if self._history else (now, {})
        self._history.append((now, current))
        elapsed = now - base_time
        models = {}
        for name, counts in current.items():
            before = base.get(name, ModelCounts())
            requests = counts.requests - before.requests
            errors = counts.errors - before.errors
            window = {b: c - before.buckets.get(b, 0.0) for b, c in counts.buckets.items()}
            p50, p99 = quantile(0.5, window), quantile(0.99, window)
            models[name] = {
                "requests_total": counts.requests,
                "errors_total": counts.errors,
                "rate_per_s": requests / elapsed if elapsed > 0 else 0.0,
                "error_rate": errors / requests if requests > 0 else 0.0,
                "p50_ms": None if p50 is None else p50 * 1000.0,
                "p99_ms": None if p99 is None else p99 * 1000.0,
            }
        return {"window_s": round(elapsed, 3), "models": models}
