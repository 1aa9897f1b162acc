"""A Knative Serving ``Service``: the Deployment's pod, scaled on concurrent requests, down to zero when idle.

Built from the rendered Deployment so the image, env, resources, probes and securityContext cannot drift apart.
"""

from __future__ import annotations

import copy

from ferry.deploy.k8s import Obj, meta, render_deployment
from ferry.deploy.spec import HTTP_PORT, DeploySpec

# Knative's queue-proxy drains connections itself and rejects fields it does not run (lifecycle hooks,
# fixed probe ports), and gates pod-level settings behind feature flags; these stay in the Deployment only.
_CONTAINER_FIELDS = (
    "name",
    "image",
    "imagePullPolicy",
    "envFrom",
    "env",
    "resources",
    "startupProbe",
    "readinessProbe",
    "livenessProbe",
    "securityContext",
    "volumeMounts",
)
_AUTOSCALING = "autoscaling.knative.dev/"


def _knative_container(deployment_container: Obj) -> Obj:
    container = {k: copy.deepcopy(v) for k, v in deployment_container.items() if k in _CONTAINER_FIELDS}
    # One port only, named for the protocol. Knative refuses probes on any other port, so they go to this one
    # (Knative fills it in), not to the Deployment's separate probe listener.
    container["ports"] = [{"name": "http1", "containerPort": HTTP_PORT, "protocol": "TCP"}]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        container[probe]["httpGet"].pop("port", None)
    return container


def render_knative_service(spec: DeploySpec) -> Obj:
    template = render_deployment(spec)["spec"]["template"]
    pod = template["spec"]
    min_scale = 0 if spec.scaling.scale_to_zero else spec.replicas
    annotations = {
        **template["metadata"]["annotations"],
        _AUTOSCALING + "class": "kpa.autoscaling.knative.dev",
        _AUTOSCALING + "metric": "concurrency",
        _AUTOSCALING + "target": str(spec.scaling.concurrency),
        _AUTOSCALING + "min-scale": str(min_scale),
        _AUTOSCALING + "max-scale": str(spec.autoscale_max),
    }
    revision: Obj = {
        # A soft target only: past it Knative adds pods, while Ferry's own admission control sheds the excess.
        "containerConcurrency": 0,
        "containers": [_knative_container(pod["containers"][0])],
        # emptyDir volumes are on by default since Knative 1.2; the read-only root needs a writable /tmp.
        "volumes": copy.deepcopy(pod["volumes"]),
    }
    if "initContainers" in pod:  # model-load mode needs Knative's kubernetes.podspec-init-containers flag
        revision["initContainers"] = copy.deepcopy(pod["initContainers"])
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": meta(spec),
        "spec": {
            "template": {
                "metadata": {"labels": dict(template["metadata"]["labels"]), "annotations": annotations},
                "spec": revision,
            }
        },
    }
