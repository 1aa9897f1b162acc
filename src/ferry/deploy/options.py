"""The deployment commands' options, declared once as settings groups beside the defaults they take.

``ferry containerize``, ``compose``, ``k8s``, ``deploy``, ``undeploy`` and ``status`` generate their options
from these (``ferry.cli.options.settings_command``), as ``ferry serve`` does from ``ferry.settings``; an option
that several commands share is declared once here (``_name``, ``_namespace`` ...). They read no variable: a
deployment is rendered from its command line (and ``ferry plan --values``), not from the environment.
The repository argument and ``--tag``, which the commands require, are the commands' own parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ferry.deploy.spec import (
    CLUSTER_REPLICAS,
    DEFAULT_BASE_IMAGE,
    GRPC_PORT,
    NGINX_IMAGE,
    PUBLISHED_HTTP_PORT,
    DeploySpec,
    Resources,
    Scaling,
)
from ferry.settings import Settings, SettingsGroup, setting


def _image() -> Any:
    return setting("", "Image reference, IMAGE:TAG.", option="--image")


def _name() -> Any:
    return setting(DeploySpec.name, "Name of the Deployment, Service and friends.")


def _namespace() -> Any:
    return setting(DeploySpec.namespace, "Kubernetes namespace.", option=("--namespace", "-n"))


def _replicas(default: int) -> Any:
    return setting(default, "Replicas (the autoscaler's minimum).")


def _model_uri() -> Any:
    return setting(DeploySpec.model_uri, "Model-load mode: fetch bundles from this URI at start-up.")


def _service_type() -> Any:
    return setting(DeploySpec.service_type, "LoadBalancer, ClusterIP or NodePort.")


def _context() -> Any:
    return setting(None, "kubectl context (default: the current one).", option="--context")


def _trust_code() -> Any:
    return setting(
        DeploySpec.trust_code, "Serve with FERRY_TRUST_CODE: import the bundles' Python classes (and load pickles)."
    )


def _trust_pickle() -> Any:
    return setting(
        DeploySpec.trust_pickle,
        "Serve with FERRY_TRUST_PICKLE: load pickle/joblib model files (unpickling runs their code).",
    )


def _output(default: Path, help: str) -> Any:
    return setting(default, help, option=("--output", "-o"))


class DeployOptions(SettingsGroup):
    """A deployment command's options: from its command line only."""

    env_options: ClassVar[bool] = False


@dataclass(frozen=True)
class ContainerizeOptions(DeployOptions):
    """``ferry containerize REPO --tag IMAGE:TAG``."""

    out: Path = _output(Path("build"), "Build context folder to write.")
    base_image: str = setting(DEFAULT_BASE_IMAGE, "Base image (a Python 3.11-3.13 Debian image).")
    models: bool = setting(True, "Copy the bundles in; --no-models for model-load mode.")
    source: str = setting("", "Source URL for the OCI label.")
    build: bool = setting(False, "Build the image with docker (or podman).")
    push: bool = setting(False, "Push the image after building.")
    extra: list[str] | None = setting(None, "Also install this Ferry extra (tracing, fetch); repeatable.")
    trust_code: bool = _trust_code()
    trust_pickle: bool = _trust_pickle()
    original_models: bool = setting(
        Settings.original_models,
        "Serve the original artifacts (installs scikit-learn/LightGBM) even where a bundle is compiled.",
    )
    allow_requirement_options: bool = setting(
        False,
        "Install a bundle's requirement lines that are not package specifiers (pip options such as "
        "--extra-index-url, URLs, paths): they change where the image's packages come from.",
    )


@dataclass(frozen=True)
class ComposeOptions(DeployOptions):
    """``ferry compose``: replicas behind nginx."""

    image_ref: str = _image()
    replicas: int = _replicas(DeploySpec.replicas)
    name: str = _name()
    model_uri: str = _model_uri()
    out: Path = _output(Path("."), "Folder for docker-compose.yml and nginx.conf.")
    port: int = setting(PUBLISHED_HTTP_PORT, "Host port nginx publishes for HTTP.")
    grpc_port: int = setting(GRPC_PORT, "Host port nginx publishes for gRPC.")
    nginx_image: str = setting(NGINX_IMAGE, "nginx image (any nginx >= 1.22).")
    trust_code: bool = _trust_code()
    trust_pickle: bool = _trust_pickle()


@dataclass(frozen=True)
class K8sOptions(DeployOptions):
    """``ferry k8s``: the manifests and their add-ons."""

    image_ref: str = _image()
    name: str = _name()
    namespace: str = _namespace()
    replicas: int = _replicas(CLUSTER_REPLICAS)
    max_replicas: int = setting(DeploySpec.max_replicas, "Autoscaler maximum (default 3 x replicas).")
    service_type: str = _service_type()
    model_uri: str = _model_uri()
    auth_secret: str = setting(DeploySpec.auth_secret, "Secret whose 'tokens' key becomes FERRY_AUTH_TOKENS.")
    fetch_secret: str = setting(DeploySpec.fetch_secret, "Secret with credentials for the model fetch (env).")
    cpu: str = setting(f"{Resources.cpu_request},{Resources.cpu_limit}", "CPU request,limit.")
    memory: str = setting(f"{Resources.memory_request},{Resources.memory_limit}", "Memory request,limit.")
    in_flight_target: int = setting(
        DeploySpec.in_flight_target, "Also autoscale on in-flight requests per pod (0: off)."
    )
    kserve: bool = setting(False, "Also write a KServe InferenceService.")
    knative: bool = setting(False, "Also write a Knative Service (scales on concurrency).")
    scale_to_zero: bool = setting(False, "--knative: no pod while idle (min-scale 0).")
    keda: bool = setting(False, "A KEDA ScaledObject on Ferry's queue and request rate instead of the HPA.")
    service_monitor: bool = setting(
        False, "Also write a Prometheus Operator ServiceMonitor and PrometheusRule (alerts)."
    )
    concurrency_target: int = setting(
        Scaling.concurrency, "KEDA/Knative: requests in one replica at once before scaling out."
    )
    sla_p99_ms: float = setting(Scaling.p99_seconds * 1000, "The p99 latency (ms) above which an alert fires.")
    prometheus_url: str = setting(Scaling.prometheus_url, "--keda: the Prometheus that KEDA queries.")
    values: Path | None = setting(
        None, "`ferry plan --values` output: replicas, resources, autoscaling (options given win)."
    )
    network_policy: bool = setting(True, "A NetworkPolicy: the probe port only from the kubelet and Prometheus.")
    routes: Path | None = setting(None, "Routes file: also write an Istio VirtualService (+ DestinationRules).")
    shard: bool = setting(
        False, "Spread the models over the replicas: Istio consistent hash on x-ferry-model (needs Istio)."
    )
    max_memory: str = setting(
        "", "--shard: each replica's budget for loaded models, like 1GiB (below --memory's limit)."
    )
    out: Path = _output(Path("k8s"), "Folder for the manifests.")
    trust_code: bool = _trust_code()
    trust_pickle: bool = _trust_pickle()


@dataclass(frozen=True)
class ApplyOptions(DeployOptions):
    """``ferry deploy``: apply, wait for the rollout."""

    image_ref: str = _image()
    name: str = _name()
    namespace: str = _namespace()
    replicas: int = _replicas(CLUSTER_REPLICAS)
    service_type: str = _service_type()
    model_uri: str = _model_uri()
    dry_run: bool = setting(False, "Print the objects instead of applying them.")
    timeout: int = setting(300, "Seconds to wait for the rollout.")
    context: str | None = _context()
    trust_code: bool = _trust_code()
    trust_pickle: bool = _trust_pickle()


@dataclass(frozen=True)
class UndeployOptions(DeployOptions):
    """``ferry undeploy``."""

    name: str = _name()
    namespace: str = _namespace()
    delete_namespace: bool = setting(False, "Also delete the namespace and all in it.")
    context: str | None = _context()


@dataclass(frozen=True)
class StatusOptions(DeployOptions):
    """``ferry status``."""

    name: str = _name()
    namespace: str = _namespace()
    context: str | None = _context()
