"""SLA gates: ``p99<50ms,errors<0.1%`` parsed into conditions and checked against a run's summary."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ferry.errors import LoadTestUsage

_CONDITION = re.compile(
    r"^\s*(p50|p90|p95|p99|p99\.9|p999|max|mean|errors)\s*(<=|<)\s*([0-9]*\.?[0-9]+)\s*(ms|s|%)\s*$"
)
_KEYS = {"p99.9": "p999", "p95": "p95"}


@dataclass(frozen=True)
class Condition:
    metric: str  # p50 ... p999, max, mean, or errors
    inclusive: bool
    limit: float  # milliseconds for latencies, a fraction for errors
    text: str

    def measure(self, summary: dict[str, Any]) -> float:
        if self.metric == "errors":
            return float(summary["error_rate"])
        return float(summary["latency_ms"][self.metric])

    def holds(self, summary: dict[str, Any]) -> bool:
        value = self.measure(summary)
        return value <= self.limit if self.inclusive else value < self.limit

    def describe(self, summary: dict[str, Any]) -> str:
        value = self.measure(summary)
        shown = f"{value * 100:.3g}%" if self.metric == "errors" else f"{value:.3g}ms"
        return f"{self.text}: measured {shown}"


def parse_sla(text: str) -> list[Condition]:
    conditions = []
    for part in text.split(","):
        if not part.strip():
            continue
        match = _CONDITION.match(part)
        if not match:
            raise LoadTestUsage(
                f"not an SLA condition: '{part.strip()}' (expected e.g. p99<50ms, p999<=1s or errors<0.1%)"
            )
        metric, op, number, unit = match.groups()
        metric = _KEYS.get(metric, metric)
        if (metric == "errors") != (unit == "%"):
            raise LoadTestUsage(f"'{part.strip()}': errors take a %, latencies take ms or s")
        limit = float(number) * {"ms": 1.0, "s": 1000.0, "%": 0.01}[unit]
        conditions.append(Condition(metric, op == "<=", limit, part.strip()))
    if not conditions:
        raise LoadTestUsage("empty SLA")
    return conditions


def evaluate(conditions: list[Condition], summary: dict[str, Any]) -> dict[str, Any]:
    """``{"passed": bool, "conditions": [{"condition", "passed", "detail"}]}`` for the report and the JSON."""
    rows = [{"condition": c.text, "passed": c.holds(summary), "detail": c.describe(summary)} for c in conditions]
    return {"passed": all(r["passed"] for r in rows), "conditions": rows}
