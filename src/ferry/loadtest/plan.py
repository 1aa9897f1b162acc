"""Capacity planning: from one replica's measured capacity to replicas, resources and HPA settings."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from ferry.errors import LoadTestError, LoadTestUsage
from ferry.loadtest.sla import parse_sla

DEFAULT_LATENCY_S = 0.1  # the latency budget when the SLA names no latency


@dataclass(frozen=True)
class PlanInputs:
    target_rate: float  # req/s the service must carry at peak
    replica_capacity: float  # req/s one replica sustains within the SLA
    sla: str = ""
    zones: int = 3  # replicas spread over this many zones/nodes; losing one must not break the SLA
    utilization: float = 0.7  # run each replica at this fraction of its capacity in steady state
    cpu_per_replica: float = 1.0  # cores one replica used while measured
    memory_mib: int = 512  # resident memory of one replica
    burst: float = 2.0  # HPA maximum as a multiple of the peak need


@dataclass(frozen=True)
class Plan:
    replicas: int
    hpa_min: int
    hpa_max: int
    hpa_target_cpu_percent: int
    cpu_request: str
    cpu_limit: str
    memory_request: str
    memory_limit: str
    rate_per_replica: float  # req/s one replica carries at the planned utilisation: KEDA's request-rate threshold
    concurrency_per_replica: int  # requests in one replica at once at that rate, within the SLA: KEDA and Knative
    p99_seconds: float  # the SLA's latency bound, for the alerts
    reasoning: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def k8s_values(self) -> dict[str, Any]:
        """The values ``ferry k8s`` needs, in the shape of a Kubernetes resources block and HPA spec."""
        return {
            "replicas": self.replicas,
            "resources": {
                "requests": {"cpu": self.cpu_request, "memory": self.memory_request},
                "limits": {"cpu": self.cpu_limit, "memory": self.memory_limit},
            },
            "autoscaling": {
                "minReplicas": self.hpa_min,
                "maxReplicas": self.hpa_max,
                "targetCPUUtilizationPercentage": self.hpa_target_cpu_percent,
                "targetRequestsPerSecondPerReplica": self.rate_per_replica,
                "targetConcurrencyPerReplica": self.concurrency_per_replica,
            },
            "sla": {"p99Seconds": self.p99_seconds},
        }


def make_plan(p: PlanInputs) -> Plan:
    if p.replica_capacity <= 0:
        raise LoadTestError("the measured capacity of one replica is 0 req/s: it never met the SLA")
    if not 0 < p.utilization <= 1:
        raise LoadTestUsage("utilization must be in (0, 1]")
    usable = p.replica_capacity * p.utilization
    needed = max(1, math.ceil(p.target_rate / usable))
    # N+1 per failure domain: after losing one of Z zones, the rest must still carry the peak.
    zones = max(1, p.zones)
    survive = needed if zones == 1 else math.ceil(needed * zones / (zones - 1))
    replicas = max(survive, min(2, zones))
    hpa_max = max(replicas + 1, math.ceil(replicas * p.burst))
    cpu_m = max(100, int(round(p.cpu_per_replica * 1000, -2)))
    latency_s = _latency_budget_s(p.sla)
    # Little's law: at `usable` req/s, each answered within `latency_s`, a replica holds at most this many at once.
    concurrency = max(1, math.ceil(usable * latency_s))
    reasoning = [
        f"one replica sustains {p.replica_capacity:,.0f} req/s within the SLA {p.sla or '(none given)'}",
        f"at a {p.utilization:.0%} steady-state utilisation it should carry {usable:,.0f} req/s",
        f"{p.target_rate:,.0f} req/s / {usable:,.0f} req/s = {p.target_rate / usable:.2f} -> {needed} replica(s)",
        (
            f"to survive losing 1 of {zones} zones/nodes: {needed} x {zones}/{zones - 1} -> {survive}"
            if zones > 1
            else "one zone: no headroom for losing a zone"
        ),
        f"HPA: min {replicas} (the peak plus zone headroom), max {hpa_max} ({p.burst:g}x for bursts), "
        f"target CPU {int(p.utilization * 100)}% (the utilisation the replica count assumes)",
        f"CPU request {cpu_m}m = one replica's CPU use as given (--cpu); limit 2x for start-up and bursts",
        f"memory request {p.memory_mib}Mi = one replica's resident size as given (--memory-mib); limit 1.5x",
        f"KEDA/Knative: {usable:,.0f} req/s x {latency_s * 1000:g} ms (the SLA's latency) -> at most "
        f"{concurrency} request(s) in one replica at once; scale out past that or past {usable:,.0f} req/s",
    ]
    return Plan(
        replicas=replicas,
        hpa_min=replicas,
        hpa_max=hpa_max,
        hpa_target_cpu_percent=int(p.utilization * 100),
        cpu_request=f"{cpu_m}m",
        cpu_limit=f"{cpu_m * 2}m",
        memory_request=f"{p.memory_mib}Mi",
        memory_limit=f"{int(p.memory_mib * 1.5)}Mi",
        rate_per_replica=round(usable, 1),
        concurrency_per_replica=concurrency,
        p99_seconds=latency_s,
        reasoning=reasoning,
    )


def _latency_budget_s(sla: str) -> float:
    """The SLA's p99 bound (else its tightest latency bound), in seconds."""
    latencies = {c.metric: c.limit for c in parse_sla(sla) if c.metric != "errors"} if sla else {}
    limit_ms = latencies.get("p99", min(latencies.values(), default=DEFAULT_LATENCY_S * 1000))
    return limit_ms / 1000


def capacity_from_results(results: dict[str, Any]) -> float:
    """A ``--find-max`` JSON gives ``max_rate``; a plain run that passed its SLA gives its achieved rate."""
    if "max_rate" in results:
        return float(results["max_rate"])
    sla = results.get("sla")
    if isinstance(sla, dict) and not sla.get("passed", False):
        raise LoadTestError("that run failed its SLA: its rate is not a capacity; use ferry loadtest --find-max")
    return float(results["achieved_rate"])
