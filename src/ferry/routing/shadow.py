"""Shadow traffic: the shadow gets a copy of the request after the client has its answer, and its
answer is compared with the primary's (same label, or numeric difference). Nothing here can delay
or fail the client: comparisons run as owned background tasks, bounded in number and in time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from ferry.serving.metrics import LATENCY_BUCKETS

logger = logging.getLogger("ferry.shadow")

# What a shadow call returns: (status code, response body).
ShadowCall = Callable[[], Awaitable[tuple[int, bytes]]]


class RoutingMetrics:
    """Routed requests per rule and target, and shadow agreement, on the registry the caller owns."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.routed = Counter(
            "ferry_routed_requests_total", "Requests routed, by rule and target", ["rule", "target"], registry=registry
        )
        self.latency = Histogram(
            "ferry_route_latency_seconds",
            "Latency of routed calls, by rule, role (primary or shadow) and target",
            ["rule", "role", "target"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.shadow = Counter(
            "ferry_shadow_comparisons_total",
            "Shadow comparisons by rule and outcome: agree, disagree, shadow_error, dropped",
            ["rule", "outcome"],
            registry=registry,
        )
        self.difference = Histogram(
            "ferry_shadow_abs_difference",
            "Absolute numeric difference between primary and shadow predictions",
            ["rule"],
            buckets=(0.0, 1e-6, 1e-4, 1e-3, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 100.0),
            registry=registry,
        )


@dataclass(frozen=True)
class ShadowJob:
    """One shadow call to make: the primary's answer and latency, and how to compare."""

    rule: str
    target: str
    primary: bytes
    primary_latency_s: float
    timeout_s: float
    mode: str = "auto"


@dataclass
class Comparison:
    agree: bool
    difference: float | None = None


def prediction_of(body: Any) -> Any:
    """The prediction inside any of Ferry's response shapes (native, compat, v2, KServe v1, Seldon)."""
    if not isinstance(body, dict):
        return body
    for key in ("prediction", "predictions", "label"):
        if key in body:
            return body[key]
    outputs = body.get("outputs")
    if isinstance(outputs, list) and outputs and isinstance(outputs[0], dict):
        return outputs[0].get("data")
    data = body.get("data")
    if isinstance(data, dict):
        return data.get("ndarray", data.get("tensor"))
    return body


def compare(primary: Any, shadow: Any, mode: str = "auto") -> Comparison:
    """Labels agree when equal; numbers agree within 1e-6 relative, and report the largest difference."""
    left, right = _flatten(prediction_of(primary)), _flatten(prediction_of(shadow))
    numeric = all(_is_number(v) for v in left + right) and bool(left) and len(left) == len(right)
    if mode == "number" or (mode == "auto" and numeric):
        if not numeric:
            return Comparison(agree=False)
        difference = max(abs(float(a) - float(b)) for a, b in zip(left, right, strict=True))
        scale = max(max(abs(float(v)) for v in left), 1.0)
        return Comparison(agree=difference <= 1e-6 * scale, difference=difference)
    return Comparison(agree=left == right)


def _flatten(value: Any) -> list[Any]:
    if isinstance(value, list):
        return [item for v in value for item in _flatten(v)]
    return [value]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class ShadowRunner:
    """Runs shadow calls in the background and records how they compare with the primary.

    Past ``max_in_flight`` running shadows a new one is dropped (and counted): the shadow may
    fall behind, the client never does. ``close`` cancels what is still running.
    """

    def __init__(self, metrics: RoutingMetrics, max_in_flight: int = 64, log: logging.Logger = logger) -> None:
        self.metrics = metrics
        self.max_in_flight = max_in_flight
        self.log = log
        self.tasks: set[asyncio.Task[None]] = set()

    def submit(self, job: ShadowJob, call: ShadowCall) -> None:
        if len(self.tasks) >= self.max_in_flight:
            self.metrics.shadow.labels(job.rule, "dropped").inc()
            return
        task = asyncio.create_task(self._run(job, call))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, job: ShadowJob, call: ShadowCall) -> None:
        rule, target = job.rule, job.target
        started = time.perf_counter()
        record: dict[str, Any] = {"event": "shadow", "rule": rule, "shadow": target}
        record["primary_latency_ms"] = round(job.primary_latency_s * 1000, 3)
        try:
            async with asyncio.timeout(job.timeout_s):
                status, body = await call()
            latency = time.perf_counter() - started
            self.metrics.latency.labels(rule, "shadow", target).observe(latency)
            record["shadow_latency_ms"] = round(latency * 1000, 3)
            if status != 200:
                raise ShadowFailed(f"shadow answered {status}")
            result = compare(json.loads(job.primary), json.loads(body), job.mode)
        except (Exception, TimeoutError) as exc:  # a shadow's failure is recorded, never raised
            self.metrics.shadow.labels(rule, "shadow_error").inc()
            record["error"] = "timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
            self.log.info("shadow %s", json.dumps(record))
            return
        self.metrics.shadow.labels(rule, "agree" if result.agree else "disagree").inc()
        if result.difference is not None:
            self.metrics.difference.labels(rule).observe(result.difference)
            record["difference"] = result.difference
        record["agree"] = result.agree
        self.log.info("shadow %s", json.dumps(record))

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=5.0)


class ShadowFailed(Exception):
    pass
