"""``ferry k8s --shard``: spread a repository over the replicas by consistent hashing on the model name.

Every replica serves the whole repository lazily under ``--max-memory`` (models load on their first request,
the least recently used are unloaded by bytes). Istio's ring hash on the ``x-ferry-model`` header sends each
model's requests to one replica, so each replica's working set is about 1/N of the models, while any replica
can still answer any model: a request that lands elsewhere (no header, the ring changed on a scale or a
rollout) is a cold load, never a wrong answer or a 404. Which replica holds a model is Envoy's choice, not Ferry's.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from urllib.parse import quote

from ferry.deploy.k8s import SERVICE_HTTP_PORT, Obj
from ferry.deploy.spec import GRPC_PORT, DeploySpec
from ferry.errors import SpecError
from ferry.routing.router import MODEL_HEADER, model_header_value
from ferry.serving.budget import parse_size
from ferry.settings import Settings

API_VERSION = "networking.istio.io/v1"
# Points on Envoy's hash ring; more points, a more even share per replica (about 1/sqrt(points per replica)).
RING_SIZE = 4096
# The paths that name a model (as ``ferry.routing.router.model_from_path`` reads them), for one model's route.
_PATH_FORMS = r"^/(models|v2/models)/{m}(/.*)?$|^/v1/models/{m}([:/].*)?$|^/seldon/([^/]+/)?{m}/api/.*$"


@dataclass(frozen=True)
class Sharding:
    """The per-replica memory budget, and the repository's model names (none known in model-load mode)."""

    max_memory: str
    models: tuple[str, ...] = ()

    def check(self, spec: DeploySpec) -> None:
        """The budget must parse, and leave the server itself room under the container's memory limit."""
        try:
            budget = parse_size(self.max_memory)
        except ValueError as exc:
            raise SpecError(str(exc)) from None
        try:
            limit = parse_size(spec.resources.memory_limit)
        except ValueError:
            return  # a quantity form parse_size does not read (e.g. 1e9): Kubernetes checks it
        if budget >= limit:
            raise SpecError(
                f"--max-memory {self.max_memory} must be below the memory limit {spec.resources.memory_limit}: "
                "the server, its requests and the Python heap need room beside the models"
            )


def service_host(spec: DeploySpec) -> str:
    return f"{spec.name}.{spec.namespace}.svc.cluster.local"


def shard_env(sharding: Sharding) -> list[Obj]:
    """The budget, and no preload: each replica loads only the models its share of the hash sends it."""
    return [
        {"name": Settings.env_name("max_memory"), "value": sharding.max_memory},
        {"name": Settings.env_name("preload"), "value": "false"},
    ]


def render_destination_rule(spec: DeploySpec) -> Obj:
    """Ring hash on the model header, on both Service ports (gRPC clients send it as metadata)."""
    balancer = {"consistentHash": {"httpHeaderName": MODEL_HEADER, "ringHash": {"minimumRingSize": RING_SIZE}}}
    return {
        "apiVersion": API_VERSION,
        "kind": "DestinationRule",
        "metadata": {"name": f"{spec.name}-shard", "namespace": spec.namespace, "labels": dict(spec.labels)},
        "spec": {
            "host": service_host(spec),
            "trafficPolicy": {
                "portLevelSettings": [
                    {"port": {"number": port}, "loadBalancer": copy.deepcopy(balancer)}
                    for port in (SERVICE_HTTP_PORT, GRPC_PORT)
                ]
            },
        },
    }


def model_route(spec: DeploySpec, model: str) -> Obj:
    """One model's paths on the HTTP port: the header set to its name, for clients that do not send it.

    Envoy adds a route's headers after it has chosen the host in the releases read (router.cc), so on those
    the header reaches the pod but does not steer this proxy's hash: the gateway or the client must send it.
    """
    return {
        "name": f"model:{model}",
        # Envoy matches the path as sent: a name with characters outside A-Z a-z 0-9 -._~ as percent-encoded
        "match": [
            {"uri": {"regex": _PATH_FORMS.format(m=re.escape(quote(model, safe="")))}, "port": SERVICE_HTTP_PORT}
        ],
        "headers": {"request": {"set": {MODEL_HEADER: model_header_value(model)}}},
        "route": [{"destination": {"host": service_host(spec)}}],
    }


def render_virtual_service(spec: DeploySpec, models: tuple[str, ...]) -> Obj:
    """A route per model that sets the header, then everything else (gRPC, /health, unknown names) as it came."""
    http = [model_route(spec, m) for m in sorted(models)]
    http.append({"name": "default", "route": [{"destination": {"host": service_host(spec)}}]})
    return {
        "apiVersion": API_VERSION,
        "kind": "VirtualService",
        "metadata": {"name": f"{spec.name}-shard", "namespace": spec.namespace, "labels": dict(spec.labels)},
        "spec": {"hosts": [service_host(spec)], "http": http},
    }


def check_routes(spec: DeploySpec, destination_rules: list[Obj]) -> None:
    """A routes file's DestinationRule on the sharded Service would be a second one for its host: refused."""
    names = {spec.name, f"{spec.name}.{spec.namespace}", f"{spec.name}.{spec.namespace}.svc", service_host(spec)}
    for rule in destination_rules:
        if rule["spec"]["host"] in names:
            raise SpecError(
                f"the routes file's versions of '{rule['spec']['host']}' need a DestinationRule on the Service that "
                "--shard hashes over; Istio takes one per host, so route versions to another Service"
            )


def apply_sharding(objects: dict[str, Obj], spec: DeploySpec, sharding: Sharding) -> dict[str, Obj]:
    """``objects`` with the Deployment's server given the budget, plus the DestinationRule and VirtualService."""
    sharding.check(spec)
    out = dict(objects)
    deployment = copy.deepcopy(out["20-deployment.yaml"])
    server = deployment["spec"]["template"]["spec"]["containers"][0]
    server["env"] = [*server.get("env", []), *shard_env(sharding)]
    out["20-deployment.yaml"] = deployment
    out["70-shard-destinationrule.yaml"] = render_destination_rule(spec)
    if sharding.models:
        out["71-shard-virtualservice.yaml"] = render_virtual_service(spec, sharding.models)
    return dict(sorted(out.items()))
