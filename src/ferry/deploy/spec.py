"""One description of a deployment, shared by the Dockerfile, compose and Kubernetes renderers.

Every value that two objects must agree on (ports, probe paths, the UID, labels, the image) lives here once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ferry.errors import SpecError
from ferry.settings import Settings

UID = 10001
GID = 10001
HTTP_PORT = Settings.port
GRPC_PORT = Settings.grpc_port
PROBE_PORT = Settings.probe_port  # /health, /ready, /metrics on a listener that never waits behind work
MODELS_DIR = "/models"
CONTAINER_HOST = "0.0.0.0"  # a container serves on every interface; its ports are what is published
TMP_DIR = "/tmp"
VENV_DIR = "/opt/venv"
LIVENESS_PATH = "/health"
READINESS_PATH = "/ready"
METRICS_PATH = "/metrics"
PRESTOP_SECONDS = 5
CLUSTER_REPLICAS = 3  # ferry k8s / deploy: one replica per zone of three survives losing a zone
# 3.11: the fastest to start at the same throughput and one worker's RSS (3.13 saves ~1.7 MiB per extra worker;
# docs/performance.md, "Python 3.11, 3.12 and 3.13"); --build-arg PYTHON_VERSION=3.13 builds on 3.13.
DEFAULT_BASE_IMAGE = "python:3.11-slim-bookworm"
NGINX_IMAGE = "nginx:1.27-alpine"  # ferry compose: the front that balances over the replicas
PUBLISHED_HTTP_PORT = 8080  # ferry compose: the host port that front publishes
IN_FLIGHT_METRIC = "ferry_in_flight_rows"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class Resources:
    cpu_request: str = "250m"
    memory_request: str = "512Mi"
    cpu_limit: str = "1"
    memory_limit: str = "1Gi"


@dataclass(frozen=True)
class Scaling:
    """Per-replica targets for request-driven autoscaling (KEDA, Knative) and the alerts' SLA; see ``ferry plan``."""

    concurrency: int = 10  # requests in a replica at once (queued + computing): KEDA threshold, Knative target
    rate: float = 0.0  # req/s one replica should carry; 0: no request-rate trigger
    p99_seconds: float = 0.1  # the PrometheusRule fires when p99 stays above this
    scale_to_zero: bool = False  # Knative: no pod while no request comes
    prometheus_url: str = "http://prometheus-operated.monitoring.svc:9090"  # where KEDA queries Ferry's metrics

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise SpecError(f"concurrency target must be at least 1, got {self.concurrency}")
        if self.rate < 0 or self.p99_seconds <= 0:
            raise SpecError("the request-rate target must be >= 0 and the p99 SLA > 0")


@dataclass(frozen=True)
class DeploySpec:
    """What to run and how; ``model_uri`` set means model-load mode (bundles fetched at start-up)."""

    image: str
    name: str = "ferry"
    namespace: str = "ferry"
    replicas: int = 2
    max_replicas: int = 0  # 0: three times ``replicas``
    service_type: str = "LoadBalancer"
    model_uri: str = ""
    drain_timeout: int = Settings.drain_timeout
    workers: int = Settings.workers
    log_level: str = Settings.log_level
    resources: Resources = field(default_factory=Resources)
    auth_secret: str = ""
    fetch_secret: str = ""
    cpu_target_percent: int = 70
    in_flight_target: int = 0  # 0: scale on CPU only
    scaling: Scaling = field(default_factory=Scaling)
    trust_code: bool = False  # the operator's --trust-code: the pods import the bundles' Python classes
    trust_pickle: bool = False  # the operator's --trust-pickle: the pods unpickle the bundles' pickle/joblib files

    def __post_init__(self) -> None:
        for what, value in (("name", self.name), ("namespace", self.namespace)):
            if not _DNS_LABEL.match(value):
                raise SpecError(f"{what} '{value}' is not a valid Kubernetes name (lower-case letters, digits, '-')")
        if self.service_type not in ("LoadBalancer", "ClusterIP", "NodePort"):
            raise SpecError(f"service type '{self.service_type}' is not one of LoadBalancer, ClusterIP, NodePort")
        if self.replicas < 1:
            raise SpecError(f"replicas must be at least 1, got {self.replicas}")
        if self.max_replicas and self.max_replicas < self.replicas:
            raise SpecError(f"max replicas {self.max_replicas} is below replicas {self.replicas}")
        if ":" not in self.image.rsplit("/", 1)[-1] and "@" not in self.image:
            raise SpecError(f"image '{self.image}' has no tag; give IMAGE:TAG so rollouts are reproducible")

    @property
    def autoscale_max(self) -> int:
        return self.max_replicas or self.replicas * 3

    @property
    def termination_grace_seconds(self) -> int:
        """The pre-stop pause, then the server's drain, then a margin before SIGKILL."""
        return PRESTOP_SECONDS + self.drain_timeout + 5

    @property
    def selector_labels(self) -> dict[str, str]:
        return {"app.kubernetes.io/name": "ferry", "app.kubernetes.io/instance": self.name}

    @property
    def labels(self) -> dict[str, str]:
        return {
            **self.selector_labels,
            "app.kubernetes.io/version": image_tag(self.image)[:63].strip("-_.") or "latest",
            "app.kubernetes.io/component": "predictor",
            "app.kubernetes.io/managed-by": "ferry",
        }

    def server_env(self) -> dict[str, str]:
        """The serve settings as FERRY_* variables: the ConfigMap, compose's environment and ``docker run -e``."""
        chosen: dict[str, Any] = {"workers": self.workers, "drain_timeout": self.drain_timeout}
        chosen |= {"log_level": self.log_level} | ({"trust_code": True} if self.trust_code else {})
        chosen |= {"trust_pickle": True} if self.trust_pickle else {}
        return container_env(**chosen)


def container_env(**settings: Any) -> dict[str, str]:
    """Where a container serves, plus ``settings``, as the FERRY_* variables ``Settings.to_env`` names.

    Built through ``Settings``, so a renamed or misspelt setting fails here rather than being ignored by the server.
    """
    ports = {"port": HTTP_PORT, "grpc_port": GRPC_PORT, "probe_port": PROBE_PORT}
    values = {"repo": Path(MODELS_DIR), "host": CONTAINER_HOST, **ports, **settings}
    return Settings(**values).to_env(tuple(values))


def image_tag(image: str) -> str:
    """``registry:5000/team/ferry:1.2`` -> ``1.2``; a digest reference gives the digest."""
    if "@" in image:
        return image.rsplit("@", 1)[1].replace(":", "-")
    last = image.rsplit("/", 1)[-1]
    return last.rsplit(":", 1)[1] if ":" in last else "latest"


def image_name(image: str) -> str:
    """The image without its tag or digest, as kustomize's ``images:`` matches it."""
    if "@" in image:
        return image.rsplit("@", 1)[0]
    head, _, last = image.rpartition("/")
    bare = last.rsplit(":", 1)[0]
    return f"{head}/{bare}" if head else bare
