"""Prometheus Operator objects: a ServiceMonitor that scrapes every replica, and a PrometheusRule with Ferry's alerts.

The metric names below are the ones ``ferry.serving.metrics`` exports; a test reads them back from a live ``/metrics``.
"""

from __future__ import annotations

from ferry.deploy.k8s import Obj, meta
from ferry.deploy.spec import METRICS_PATH, DeploySpec

REQUESTS = "ferry_requests_total"
LATENCY_BUCKETS = "ferry_request_duration_seconds_bucket"
QUEUE_DEPTH = "ferry_queue_depth"
IN_FLIGHT = "ferry_in_flight_rows"
REJECTIONS = "ferry_rejections_total"
DEADLINE_MISSES = "ferry_deadline_misses_total"
MODEL_STATE = "ferry_model_state"

SCRAPE_INTERVAL = "15s"
RATE_WINDOW = "5m"
SHED_RATIO = 0.01  # alert when more than 1% of requests are refused at admission ...
DEADLINE_RATIO = 0.01  # ... or miss their deadline


def selector(spec: DeploySpec) -> str:
    """This deployment's series: the ServiceMonitor's job label is the Service's name."""
    return f'{{namespace="{spec.namespace}",job="{spec.name}"}}'


def requests_in_system(spec: DeploySpec) -> str:
    """Requests queued plus rows computing, summed over replicas (0 before any request, not 'no data')."""
    sel = selector(spec)
    return f"(sum({QUEUE_DEPTH}{sel}) or vector(0)) + (sum({IN_FLIGHT}{sel}) or vector(0))"


def request_rate(spec: DeploySpec) -> str:
    return f"sum(rate({REQUESTS}{selector(spec)}[1m]))"


def render_service_monitor(spec: DeploySpec) -> Obj:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": meta(spec),
        "spec": {
            "selector": {"matchLabels": dict(spec.selector_labels)},
            # /metrics is never behind auth or load shedding, so no credentials are needed here.
            "endpoints": [{"port": "http", "path": METRICS_PATH, "interval": SCRAPE_INTERVAL}],
        },
    }


def _ratio(spec: DeploySpec, counter: str) -> str:
    sel = selector(spec)
    return f"sum(rate({counter}{sel}[{RATE_WINDOW}])) / sum(rate({REQUESTS}{sel}[{RATE_WINDOW}]))"


def _alert(name: str, expr: str, wait: str, severity: str, summary: str) -> Obj:
    return {
        "alert": name,
        "expr": expr,
        "for": wait,
        "labels": {"severity": severity},
        "annotations": {"summary": summary},
    }


def render_prometheus_rule(spec: DeploySpec) -> Obj:
    sel, sla = selector(spec), spec.scaling.p99_seconds
    p99 = f"histogram_quantile(0.99, sum by (le) (rate({LATENCY_BUCKETS}{sel}[{RATE_WINDOW}])))"
    alerts = [
        _alert(
            "FerryShedding",
            f"{_ratio(spec, REJECTIONS)} > {SHED_RATIO}",
            "5m",
            "warning",
            f"{spec.name}: over {SHED_RATIO:.0%} of requests refused at admission (queue full): add replicas",
        ),
        _alert(
            "FerryDeadlineMisses",
            f"{_ratio(spec, DEADLINE_MISSES)} > {DEADLINE_RATIO}",
            "5m",
            "warning",
            f"{spec.name}: over {DEADLINE_RATIO:.0%} of requests missed their deadline (504)",
        ),
        _alert(
            "FerryP99AboveSLA",
            f"{p99} > {sla:g}",
            "10m",
            "critical",
            f"{spec.name}: p99 latency above the SLA of {sla * 1000:g} ms",
        ),
        _alert(
            "FerryModelNotReady",
            f'max by (pod, model, version) ({MODEL_STATE}{{namespace="{spec.namespace}",job="{spec.name}",'
            f'state=~"LOADING|FAILED"}}) == 1',  # UNLOADED (--max-memory) is a normal, servable state
            "5m",
            "critical",
            f"{spec.name}: a model version is stuck LOADING or FAILED on a pod",
        ),
    ]
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": meta(spec),
        "spec": {"groups": [{"name": f"ferry-{spec.name}", "rules": alerts}]},
    }
