"""Kubernetes objects as plain dicts: Namespace, ConfigMap, Deployment, Service, HPA, PDB, NetworkPolicy,
kustomization, KServe.

Nothing here talks to a cluster; ``write_manifests`` writes the rendered YAML, ``ferry.deploy.kubectl`` applies it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from ferry.deploy.spec import (
    GID,
    GRPC_PORT,
    HTTP_PORT,
    IN_FLIGHT_METRIC,
    LIVENESS_PATH,
    METRICS_PATH,
    MODELS_DIR,
    PRESTOP_SECONDS,
    PROBE_PORT,
    READINESS_PATH,
    TMP_DIR,
    UID,
    DeploySpec,
    image_name,
    image_tag,
)
from ferry.settings import Settings

Obj = dict[str, Any]
SERVICE_HTTP_PORT = 80
# Who may reach the probe port besides the kubelet (whose traffic, from the pod's own node, every policy
# engine lets through): Prometheus, as kube-prometheus-stack and the Prometheus Operator label it.
PROMETHEUS_NAMESPACE = "monitoring"
PROMETHEUS_POD_LABELS = {"app.kubernetes.io/name": "prometheus"}


def meta(spec: DeploySpec, name: str | None = None, namespaced: bool = True) -> Obj:
    meta: Obj = {"name": name or spec.name, "labels": dict(spec.labels)}
    if namespaced:
        meta["namespace"] = spec.namespace
    return meta


def render_namespace(spec: DeploySpec) -> Obj:
    metadata = meta(spec, spec.namespace, namespaced=False)
    # The pod below meets the "restricted" Pod Security Standard; enforcing it keeps it that way.
    metadata["labels"]["pod-security.kubernetes.io/enforce"] = "restricted"
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": metadata}


def render_configmap(spec: DeploySpec) -> Obj:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta(spec), "data": spec.server_env()}


def _security_context() -> Obj:
    return {
        "runAsNonRoot": True,
        "runAsUser": UID,
        "runAsGroup": GID,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _http_probe(path: str, period: int, failures: int, timeout: int = 2) -> Obj:
    return {
        "httpGet": {"path": path, "port": "probe"},  # the probe listener: never behind the request load
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
    }


def _resources(spec: DeploySpec) -> Obj:
    r = spec.resources
    return {
        "requests": {"cpu": r.cpu_request, "memory": r.memory_request},
        "limits": {"cpu": r.cpu_limit, "memory": r.memory_limit},
    }


def _server_container(spec: DeploySpec) -> Obj:
    env: list[Obj] = []
    if spec.auth_secret:
        env.append(
            {
                "name": Settings.env_name("auth_tokens"),
                "valueFrom": {"secretKeyRef": {"name": spec.auth_secret, "key": "tokens"}},
            }
        )
    mounts: list[Obj] = [{"name": "tmp", "mountPath": TMP_DIR}]
    if spec.model_uri:
        mounts.append({"name": "models", "mountPath": MODELS_DIR, "readOnly": True})
    container: Obj = {
        "name": "ferry",
        "image": spec.image,
        "imagePullPolicy": "IfNotPresent",
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            {"name": "probe", "containerPort": PROBE_PORT, "protocol": "TCP"},
        ],
        "envFrom": [{"configMapRef": {"name": spec.name}}],
        "resources": _resources(spec),
        # Up to 5 minutes for the process to come up; liveness only starts after.
        "startupProbe": _http_probe(LIVENESS_PATH, period=2, failures=150),
        "readinessProbe": _http_probe(READINESS_PATH, period=5, failures=2),
        "livenessProbe": _http_probe(LIVENESS_PATH, period=10, failures=3, timeout=5),
        # Endpoints are removed asynchronously; keep serving while load balancers catch up, then drain.
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRESTOP_SECONDS)]}}},
        "securityContext": _security_context(),
        "volumeMounts": mounts,
    }
    if env:
        container["env"] = env
    return container


def _fetch_container(spec: DeploySpec) -> Obj:
    container: Obj = {
        "name": "fetch-models",
        "image": spec.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["ferry", "fetch"],
        "args": [spec.model_uri, MODELS_DIR],
        "resources": _resources(spec),
        "securityContext": _security_context(),
        "volumeMounts": [{"name": "tmp", "mountPath": TMP_DIR}, {"name": "models", "mountPath": MODELS_DIR}],
    }
    if spec.fetch_secret:
        container["envFrom"] = [{"secretRef": {"name": spec.fetch_secret}}]
    return container


def config_checksum(spec: DeploySpec) -> str:
    return hashlib.sha256(json.dumps(render_configmap(spec)["data"], sort_keys=True).encode()).hexdigest()


def render_deployment(spec: DeploySpec) -> Obj:
    volumes: list[Obj] = [{"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}}]
    pod: Obj = {
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": spec.termination_grace_seconds,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": UID,
            "runAsGroup": GID,
            "fsGroup": GID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [_server_container(spec)],
        "volumes": volumes,
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": dict(spec.selector_labels)},
            }
        ],
    }
    if spec.model_uri:
        pod["initContainers"] = [_fetch_container(spec)]
        volumes.append({"name": "models", "emptyDir": {"sizeLimit": "4Gi"}})
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(spec),
        "spec": {
            "replicas": spec.replicas,
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": dict(spec.selector_labels)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {
                    "labels": dict(spec.labels),
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(HTTP_PORT),
                        "prometheus.io/path": METRICS_PATH,
                        # A changed ConfigMap changes the template, so pods roll.
                        "ferry.io/config-sha256": config_checksum(spec),
                    },
                },
                "spec": pod,
            },
        },
    }


def render_service(spec: DeploySpec) -> Obj:
    service: Obj = {
        "type": spec.service_type,
        "selector": dict(spec.selector_labels),
        "ports": [
            {"name": "http", "port": SERVICE_HTTP_PORT, "targetPort": "http", "protocol": "TCP", "appProtocol": "http"},
            {
                "name": "grpc",
                "port": GRPC_PORT,
                "targetPort": "grpc",
                "protocol": "TCP",
                "appProtocol": "kubernetes.io/h2c",
            },
        ],
    }
    if spec.service_type == "LoadBalancer":
        service["externalTrafficPolicy"] = "Local"  # keeps client addresses, skips a second hop
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta(spec), "spec": service}


def render_hpa(spec: DeploySpec) -> Obj:
    metrics: list[Obj] = [
        {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": spec.cpu_target_percent},
            },
        }
    ]
    if spec.in_flight_target:
        # Needs a custom-metrics adapter (e.g. prometheus-adapter) exposing the gauge per pod.
        metrics.append(
            {
                "type": "Pods",
                "pods": {
                    "metric": {"name": IN_FLIGHT_METRIC},
                    "target": {"type": "AverageValue", "averageValue": str(spec.in_flight_target)},
                },
            }
        )
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": meta(spec),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": spec.name},
            "minReplicas": spec.replicas,
            "maxReplicas": spec.autoscale_max,
            "metrics": metrics,
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}},
        },
    }


def render_pdb(spec: DeploySpec) -> Obj:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": meta(spec),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": dict(spec.selector_labels)}},
    }


def render_network_policy(spec: DeploySpec) -> Obj:
    """Ingress to the pods: HTTP and gRPC from anywhere (the Service's clients); the probe port only from the
    kubelet (the pod's node, always allowed) and Prometheus, so no other pod can hold its connections and
    get a healthy pod restarted. Without a policy engine in the cluster the object is inert."""
    prometheus = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": PROMETHEUS_NAMESPACE}},
        "podSelector": {"matchLabels": dict(PROMETHEUS_POD_LABELS)},
    }
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": meta(spec),
        "spec": {
            "podSelector": {"matchLabels": dict(spec.selector_labels)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"ports": [{"port": "http", "protocol": "TCP"}, {"port": "grpc", "protocol": "TCP"}]},
                {"from": [prometheus], "ports": [{"port": "probe", "protocol": "TCP"}]},
            ],
        },
    }


def render_inference_service(spec: DeploySpec) -> Obj:
    """KServe with a custom predictor container: the same image, ports and probes as the Deployment."""
    server = _server_container(spec)
    container = {
        "name": "kserve-container",
        "image": spec.image,
        "ports": [{"containerPort": HTTP_PORT, "protocol": "TCP"}],  # KServe routes to exactly one port
        "envFrom": server["envFrom"],
        "resources": server["resources"],
        "readinessProbe": server["readinessProbe"] | {"httpGet": {"path": READINESS_PATH, "port": PROBE_PORT}},
        "livenessProbe": server["livenessProbe"] | {"httpGet": {"path": LIVENESS_PATH, "port": PROBE_PORT}},
        "securityContext": server["securityContext"],
        "volumeMounts": [{"name": "tmp", "mountPath": TMP_DIR}],
    }
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": meta(spec),
        "spec": {
            "predictor": {
                "minReplicas": spec.replicas,
                "maxReplicas": spec.autoscale_max,
                "containers": [container],
                "volumes": [{"name": "tmp", "emptyDir": {}}],
            }
        },
    }


def render_manifests(spec: DeploySpec, kserve: bool = False) -> dict[str, Obj]:
    """File name -> object, in apply order (the Namespace first)."""
    objects = {
        "00-namespace.yaml": render_namespace(spec),
        "10-configmap.yaml": render_configmap(spec),
        "20-deployment.yaml": render_deployment(spec),
        "30-service.yaml": render_service(spec),
        "40-hpa.yaml": render_hpa(spec),
        "50-pdb.yaml": render_pdb(spec),
    }
    if kserve:
        objects["60-inferenceservice.yaml"] = render_inference_service(spec)
    return objects


def render_kustomization(spec: DeploySpec, files: list[str]) -> Obj:
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": files,
        "images": [{"name": image_name(spec.image), "newTag": image_tag(spec.image)}],
    }


def to_yaml(objects: list[Obj]) -> str:
    """A multi-document YAML stream, as ``kubectl apply -f -`` reads it."""
    return "---\n".join(yaml.safe_dump(obj, sort_keys=False) for obj in objects)


# Alternatives to the Deployment (the same pod under another controller): written, but left out of the kustomization.
STANDALONE = ("60-inferenceservice.yaml", "65-knative-service.yaml")


def write_manifests(
    spec: DeploySpec, out: Path, kserve: bool = False, objects: dict[str, Obj] | None = None
) -> list[Path]:
    """Write ``objects`` (default: ``render_manifests``) and a kustomization over all but the standalone ones."""
    out.mkdir(parents=True, exist_ok=True)
    manifests = objects if objects is not None else render_manifests(spec, kserve=kserve)
    written = []
    for name, obj in manifests.items():
        (out / name).write_text(yaml.safe_dump(obj, sort_keys=False), encoding="utf-8")
        written.append(out / name)
    kustomization = render_kustomization(spec, [n for n in manifests if n not in STANDALONE])
    (out / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False), encoding="utf-8")
    written.append(out / "kustomization.yaml")
    return written
