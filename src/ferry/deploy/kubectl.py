"""Apply, remove and inspect the rendered objects through ``kubectl``: argv lists, manifests on stdin."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

from ferry.deploy.k8s import to_yaml
from ferry.deploy.spec import DeploySpec
from ferry.errors import ToolError

FIELD_MANAGER = "ferry"


@dataclass(frozen=True)
class Status:
    ready: int
    desired: int
    updated: int
    address: str | None  # the Service's external address, once the cloud has given it one
    service_type: str


def kubectl(args: list[str], stdin: str | None = None, context: str | None = None) -> str:
    """Run ``kubectl ARGS``; the cluster's own message is the error when it fails."""
    exe = shutil.which("kubectl")
    if exe is None:
        raise ToolError("kubectl is not on PATH; install it, or use `ferry k8s -o DIR` and apply the files yourself")
    argv = [exe, *(["--context", context] if context else []), *args]
    result = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        message = (result.stderr or result.stdout).strip() or f"exited with status {result.returncode}"
        raise ToolError(f"kubectl {' '.join(args[:2])}: {message}")
    return result.stdout


def apply_argv(server_dry_run: bool = False) -> list[str]:
    argv = ["apply", "--server-side", f"--field-manager={FIELD_MANAGER}", "--force-conflicts", "-f", "-"]
    return [*argv, "--dry-run=server"] if server_dry_run else argv


def rollout_argv(spec: DeploySpec, timeout_s: int) -> list[str]:
    return ["rollout", "status", f"deployment/{spec.name}", "-n", spec.namespace, f"--timeout={timeout_s}s"]


def delete_argv(wait: bool = True) -> list[str]:
    return ["delete", "--ignore-not-found", f"--wait={'true' if wait else 'false'}", "-f", "-"]


def apply(objects: list[dict[str, Any]], context: str | None = None, server_dry_run: bool = False) -> str:
    return kubectl(apply_argv(server_dry_run), stdin=to_yaml(objects), context=context)


def wait_rollout(spec: DeploySpec, timeout_s: int, context: str | None = None) -> str:
    return kubectl(rollout_argv(spec, timeout_s), context=context)


def delete(objects: list[dict[str, Any]], context: str | None = None) -> str:
    return kubectl(delete_argv(), stdin=to_yaml(objects), context=context)


def status(spec: DeploySpec, context: str | None = None) -> Status:
    ns = ["-n", spec.namespace, "-o", "json"]
    deployment = json.loads(kubectl(["get", "deployment", spec.name, *ns], context=context))
    service = json.loads(kubectl(["get", "service", spec.name, *ns], context=context))
    return parse_status(deployment, service)


def parse_status(deployment: dict[str, Any], service: dict[str, Any]) -> Status:
    state = deployment.get("status", {})
    return Status(
        ready=int(state.get("readyReplicas", 0)),
        desired=int(deployment.get("spec", {}).get("replicas", 0)),
        updated=int(state.get("updatedReplicas", 0)),
        address=service_address(service),
        service_type=str(service.get("spec", {}).get("type", "")),
    )


def service_address(service: dict[str, Any]) -> str | None:
    """``http://HOST`` from ``status.loadBalancer.ingress`` (an IP or a hostname), or None while pending."""
    for ingress in service.get("status", {}).get("loadBalancer", {}).get("ingress", []) or []:
        host = ingress.get("ip") or ingress.get("hostname")
        if host:
            port = next((p["port"] for p in service.get("spec", {}).get("ports", []) if p.get("name") == "http"), 80)
            return f"http://{host}" + ("" if port == 80 else f":{port}")
    return None
