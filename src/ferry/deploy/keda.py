"""A KEDA ``ScaledObject``: scale the Deployment on Ferry's own queue and request rate, read from Prometheus.

It replaces the plain HPA (KEDA makes its own; two autoscalers on one Deployment fight) and keeps its CPU target.
"""

from __future__ import annotations

from ferry.deploy import monitoring
from ferry.deploy.k8s import Obj, meta
from ferry.deploy.spec import DeploySpec


def _prometheus(name: str, query: str, threshold: float, spec: DeploySpec) -> Obj:
    return {
        "type": "prometheus",
        "name": name,
        # AverageValue: KEDA divides the query's total by the replica count and compares with the threshold.
        "metricType": "AverageValue",
        "metadata": {"serverAddress": spec.scaling.prometheus_url, "query": query, "threshold": f"{threshold:g}"},
    }


def render_scaled_object(spec: DeploySpec) -> Obj:
    triggers = [
        _prometheus("requests-in-system", monitoring.requests_in_system(spec), spec.scaling.concurrency, spec),
    ]
    if spec.scaling.rate:
        triggers.append(_prometheus("request-rate", monitoring.request_rate(spec), spec.scaling.rate, spec))
    triggers.append({"type": "cpu", "metricType": "Utilization", "metadata": {"value": str(spec.cpu_target_percent)}})
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": meta(spec),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": spec.name},
            "minReplicaCount": spec.replicas,
            "maxReplicaCount": spec.autoscale_max,
            "pollingInterval": 15,
            "advanced": {
                "horizontalPodAutoscalerConfig": {
                    "name": spec.name,
                    "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}},
                }
            },
            "triggers": triggers,
        },
    }
