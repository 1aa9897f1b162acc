"""``ferry k8s`` writes a NetworkPolicy: the probe port only from the kubelet and Prometheus, HTTP and gRPC from
anywhere; valid under the strict schema and consistent with the Deployment it guards."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import run_ferry
from ferry.deploy.addons import Addons, render_with_addons
from ferry.deploy.spec import PROBE_PORT
from ferry.settings import Settings
from test_deploy import IMAGE, K8S_VERSIONS, SPECS


@pytest.fixture(params=list(SPECS))
def objects(request: pytest.FixtureRequest) -> dict[str, dict[str, Any]]:
    return {o["kind"]: o for o in render_with_addons(SPECS[request.param], Addons()).values()}


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_the_network_policy_passes_strict_schema_validation(objects: dict[str, Any], version: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    kubernetes_validate.validate(objects["NetworkPolicy"], version, strict=True)


def test_the_probe_port_is_open_only_to_prometheus_and_the_node(objects: dict[str, Any]) -> None:
    policy, deployment = objects["NetworkPolicy"], objects["Deployment"]
    template = deployment["spec"]["template"]
    container = template["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    # It selects exactly the Deployment's pods, in the same namespace.
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector == deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= template["metadata"]["labels"].items()
    assert policy["metadata"]["namespace"] == deployment["metadata"]["namespace"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    open_rule, probe_rule = policy["spec"]["ingress"]
    # HTTP and gRPC: from anywhere (the Service's clients, the mesh, the load balancer).
    assert "from" not in open_rule and {p["port"] for p in open_rule["ports"]} == {"http", "grpc"}
    # The probe port: the port every probe uses, which the server listens on; only Prometheus besides the node.
    assert [p["port"] for p in probe_rule["ports"]] == ["probe"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] == "probe"
    assert ports["probe"] == PROBE_PORT
    assert int(objects["ConfigMap"]["data"].get(Settings.env_name("probe_port"), Settings.probe_port)) == PROBE_PORT
    (peer,) = probe_rule["from"]
    assert peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    assert peer["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}
    # Every named port the policy lets through is a port of the container.
    assert {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]} == set(ports)


def test_ferry_k8s_writes_it_unless_told_not_to(example_repo: Path, tmp_path: Path) -> None:
    on, off = tmp_path / "on", tmp_path / "off"
    assert run_ferry("k8s", str(example_repo), "--image", IMAGE, "-o", str(on)).returncode == 0
    assert run_ferry("k8s", str(example_repo), "--image", IMAGE, "--no-network-policy", "-o", str(off)).returncode == 0
    policy = yaml.safe_load((on / "55-networkpolicy.yaml").read_text())
    deployment = yaml.safe_load((on / "20-deployment.yaml").read_text())
    assert policy["kind"] == "NetworkPolicy"
    assert policy["spec"]["podSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert "55-networkpolicy.yaml" in yaml.safe_load((on / "kustomization.yaml").read_text())["resources"]
    assert not (off / "55-networkpolicy.yaml").exists()
    assert "55-networkpolicy.yaml" not in yaml.safe_load((off / "kustomization.yaml").read_text())["resources"]
