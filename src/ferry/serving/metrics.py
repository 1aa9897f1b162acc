"""Prometheus metrics on a registry the app owns (never the global one)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "ferry_requests_total",
            "HTTP requests by model, route, protocol and status code",
            ["model", "route", "protocol", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "ferry_request_duration_seconds",
            "Request latency by model and route",
            ["model", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.predictions = Counter(
            "ferry_predict_calls_total",
            "Calls into the shared predict path, by model and version",
            ["model", "version"],
            registry=self.registry,
        )
        self.rows = Counter(
            "ferry_predict_rows_total",
            "Rows predicted, by model and version",
            ["model", "version"],
            registry=self.registry,
        )
        self.errors = Counter(
            "ferry_errors_total",
            "Errors by model and error code",
            ["model", "code"],
            registry=self.registry,
        )

        self.batch_size = Histogram(
            "ferry_batch_size_rows",
            "Rows per model call after adaptive batching",
            ["model", "version"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "ferry_queue_wait_seconds",
            "Time a request waited for its batch to start",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

        self.queue_depth = Gauge(
            "ferry_queue_depth",
            "Requests waiting for a batch",
            ["model", "version"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "ferry_in_flight_rows",
            "Rows in the batch being computed",
            ["model", "version"],
            registry=self.registry,
        )
        self.rejections = Counter(
            "ferry_rejections_total",
            "Requests refused at admission (queue full)",
            ["model", "version"],
            registry=self.registry,
        )
        self.deadline_misses = Counter(
            "ferry_deadline_misses_total",
            "Requests not served within their deadline",
            ["model", "version"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
