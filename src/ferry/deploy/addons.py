"""The optional objects of ``ferry k8s``, chosen by switch, added to (or replacing some of) the base manifests."""

from __future__ import annotations

from dataclasses import dataclass

from ferry.deploy import k8s, keda, knative, monitoring
from ferry.deploy.k8s import Obj
from ferry.deploy.spec import DeploySpec


@dataclass(frozen=True)
class Addons:
    kserve: bool = False  # a KServe InferenceService (standalone)
    knative: bool = False  # a Knative Service (standalone): scale on concurrency, to zero if asked
    keda: bool = False  # a KEDA ScaledObject instead of the HPA; implies the ServiceMonitor its queries read
    service_monitor: bool = False  # a ServiceMonitor and a PrometheusRule
    network_policy: bool = True  # the probe port only from the kubelet and Prometheus


def render_with_addons(spec: DeploySpec, addons: Addons) -> dict[str, Obj]:
    """File name -> object, in apply order."""
    objects = k8s.render_manifests(spec, kserve=addons.kserve)
    if addons.keda:
        # KEDA makes and owns the HPA; a second one on the same Deployment would fight it.
        del objects["40-hpa.yaml"]
        objects["40-scaledobject.yaml"] = keda.render_scaled_object(spec)
    if addons.knative:
        objects["65-knative-service.yaml"] = knative.render_knative_service(spec)
    if addons.network_policy:
        objects["55-networkpolicy.yaml"] = k8s.render_network_policy(spec)
    if addons.service_monitor or addons.keda:
        objects["80-servicemonitor.yaml"] = monitoring.render_service_monitor(spec)
        objects["81-prometheusrule.yaml"] = monitoring.render_prometheus_rule(spec)
    return dict(sorted(objects.items()))
