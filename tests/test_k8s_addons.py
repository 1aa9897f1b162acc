"""``ferry k8s --knative/--keda/--service-monitor/--values``: strict CRD schemas, agreement with the Deployment,
and PromQL that names only metrics a live ``ferry serve`` really exports.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from tests.conftest import run_ferry
from tests.manual import manual_text

from ferry.deploy import keda, knative, monitoring
from ferry.deploy.addons import Addons, render_with_addons
from ferry.deploy.spec import HTTP_PORT, DeploySpec, Scaling
from ferry.deploy.values import parse_values
from ferry.errors import SpecError

IMAGE = "registry.example.com/team/ferry-examples:1.4.2"
ALL = Addons(kserve=True, knative=True, keda=True, service_monitor=True)
SPECS = {
    "model-in-image": DeploySpec(image=IMAGE),
    "model-load": DeploySpec(
        image=IMAGE,
        name="reviews",
        namespace="ml-prod",
        model_uri="s3://models/prod",
        auth_secret="ferry-tokens",
        replicas=1,
        scaling=Scaling(concurrency=4, rate=250.0, p99_seconds=0.05, scale_to_zero=True),
    ),
}


@pytest.fixture(params=list(SPECS), scope="module")
def spec(request: pytest.FixtureRequest) -> DeploySpec:
    return SPECS[request.param]


def by_kind(spec: DeploySpec) -> dict[str, dict[str, Any]]:
    objects = render_with_addons(spec, ALL)
    return {f"{o['apiVersion'].split('/')[0]}/{o['kind']}": o for o in objects.values()}


def strict(obj: dict[str, Any]) -> None:
    """Valid under cloudcoil's models of the CRD, and nothing dropped on the way (no field the CRD lacks)."""
    from cloudcoil.models.keda import v1alpha1 as keda_models
    from cloudcoil.models.knative_serving.serving import v1 as knative_models
    from cloudcoil.models.prometheus_operator import v1 as prometheus_models

    model = {
        "serving.knative.dev/v1/Service": knative_models.Service,
        "keda.sh/v1alpha1/ScaledObject": keda_models.ScaledObject,
        "monitoring.coreos.com/v1/ServiceMonitor": prometheus_models.ServiceMonitor,
        "monitoring.coreos.com/v1/PrometheusRule": prometheus_models.PrometheusRule,
    }[f"{obj['apiVersion']}/{obj['kind']}"]
    parsed = model.model_validate(obj, strict=True)
    assert parsed.model_dump(by_alias=True, exclude_none=True) == obj


def test_new_objects_are_valid_under_the_crd_models(spec: DeploySpec) -> None:
    objects = render_with_addons(spec, ALL)
    assert "40-hpa.yaml" not in objects  # KEDA owns the HPA; a second one would fight it
    for name in ("40-scaledobject.yaml", "65-knative-service.yaml", "80-servicemonitor.yaml", "81-prometheusrule.yaml"):
        strict(objects[name])


@pytest.mark.parametrize("version", ["1.29.0", "1.33.0"])
def test_knative_pod_passes_strict_kubernetes_validation(spec: DeploySpec, version: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    revision = knative.render_knative_service(spec)["spec"]["template"]  # a fresh copy: changed below
    pod_spec = {k: v for k, v in revision["spec"].items() if k != "containerConcurrency"}
    container = pod_spec["containers"][0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):  # Knative fills in its one port, as here
        container[probe]["httpGet"]["port"] = container["ports"][0]["containerPort"]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": spec.name, **revision["metadata"]}, "spec": pod_spec}
    kubernetes_validate.validate(pod, version, strict=True)


def test_knative_runs_the_deployments_container(spec: DeploySpec) -> None:
    objs = by_kind(spec)
    deployment, service = objs["apps/Deployment"], objs["serving.knative.dev/Service"]
    pod, revision = deployment["spec"]["template"], service["spec"]["template"]
    server, container = pod["spec"]["containers"][0], revision["spec"]["containers"][0]
    for key in ("image", "envFrom", "resources", "securityContext", "volumeMounts"):
        assert container[key] == server[key], key
    assert container.get("env") == server.get("env")  # the auth Secret travels too
    http = next(p for p in server["ports"] if p["name"] == "http")
    assert container["ports"] == [{"name": "http1", "containerPort": http["containerPort"], "protocol": "TCP"}]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": server[probe]["httpGet"]["path"]}
        assert {k: v for k, v in container[probe].items() if k != "httpGet"} == {
            k: v for k, v in server[probe].items() if k != "httpGet"
        }
    assert revision["metadata"]["labels"] == pod["metadata"]["labels"]
    assert revision["spec"].get("initContainers") == pod["spec"].get("initContainers")
    annotations = revision["metadata"]["annotations"]
    assert annotations["autoscaling.knative.dev/target"] == str(spec.scaling.concurrency)
    assert annotations["autoscaling.knative.dev/min-scale"] == ("0" if spec.scaling.scale_to_zero else "2")
    assert annotations["autoscaling.knative.dev/max-scale"] == str(spec.autoscale_max)
    assert annotations["prometheus.io/port"] == str(HTTP_PORT)


def test_scaled_object_targets_the_deployment_with_the_plans_thresholds(spec: DeploySpec) -> None:
    objs = by_kind(spec)
    scaled = objs["keda.sh/ScaledObject"]["spec"]
    assert scaled["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": spec.name}
    assert objs["apps/Deployment"]["metadata"]["name"] == spec.name
    assert (scaled["minReplicaCount"], scaled["maxReplicaCount"]) == (spec.replicas, spec.autoscale_max)
    triggers = {t["name"] if "name" in t else t["type"]: t for t in scaled["triggers"]}
    assert triggers["requests-in-system"]["metadata"]["threshold"] == str(spec.scaling.concurrency)
    assert triggers["cpu"]["metadata"]["value"] == str(spec.cpu_target_percent)
    if spec.scaling.rate:
        assert triggers["request-rate"]["metadata"]["threshold"] == f"{spec.scaling.rate:g}"
    else:
        assert "request-rate" not in triggers
    for trigger in scaled["triggers"]:
        if trigger["type"] == "prometheus":
            assert f'namespace="{spec.namespace}",job="{spec.name}"' in trigger["metadata"]["query"]


def test_service_monitor_scrapes_the_services_metrics_port(spec: DeploySpec) -> None:
    objs = by_kind(spec)
    monitor, service = objs["monitoring.coreos.com/ServiceMonitor"]["spec"], objs["v1/Service"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["endpoints"]
    port = next(p for p in service["spec"]["ports"] if p["name"] == endpoint["port"])
    server = objs["apps/Deployment"]["spec"]["template"]["spec"]["containers"][0]
    container_port = next(p for p in server["ports"] if p["name"] == port["targetPort"])
    assert container_port["containerPort"] == HTTP_PORT
    annotations = objs["apps/Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert endpoint["path"] == annotations["prometheus.io/path"]
    rules = objs["monitoring.coreos.com/PrometheusRule"]["spec"]["groups"][0]["rules"]
    assert [r["alert"] for r in rules] == [
        "FerryShedding",
        "FerryDeadlineMisses",
        "FerryP99AboveSLA",
        "FerryModelNotReady",
    ]
    assert rules[2]["expr"].endswith(f"> {spec.scaling.p99_seconds:g}")


def promql(spec: DeploySpec) -> list[str]:
    scaled = keda.render_scaled_object(spec)["spec"]["triggers"]
    rules = monitoring.render_prometheus_rule(spec)["spec"]["groups"][0]["rules"]
    return [t["metadata"]["query"] for t in scaled if t["type"] == "prometheus"] + [r["expr"] for r in rules]


def test_queries_name_metrics_and_labels_a_live_server_exports(examples_server: Any) -> None:
    sample = httpx.get(f"{examples_server.url}/models/iris/metadata").json().get("sample_input")
    assert httpx.post(f"{examples_server.url}/models/iris/predict", json=sample).status_code == 200
    text = httpx.get(examples_server.url + monitoring.render_service_monitor(SPECS["model-in-image"])["spec"][
        "endpoints"][0]["path"]).text  # fmt: skip
    declared = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))
    exported = set(declared)
    for name, kind in declared.items():
        if kind == "histogram":
            exported |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    spec = SPECS["model-load"]
    used = {name for query in promql(spec) for name in re.findall(r"\bferry_[a-z_]+\b", query)}
    assert used >= {monitoring.QUEUE_DEPTH, monitoring.REJECTIONS, monitoring.DEADLINE_MISSES, monitoring.MODEL_STATE}
    assert used <= exported, f"not exported by ferry serve: {used - exported}"
    # The label values the alerts compare with are the ones the server writes.
    states = {s.labels["state"] for s in samples if s.name == monitoring.MODEL_STATE}
    assert "READY" in states and states <= {"LOADING", "READY", "FAILED", "UNLOADED"}
    alerted = {v for q in promql(spec) for v in re.findall(r'state=~"([^"]+)"', q) for v in v.split("|")}
    assert alerted == {"LOADING", "FAILED"}  # UNLOADED under --max-memory is servable, never an alert
    assert any(s.name == monitoring.LATENCY_BUCKETS and "le" in s.labels for s in samples)
    assert any(s.name == monitoring.QUEUE_DEPTH for s in samples)  # the queue gauge exists once a model served


# ---------------------------------------------------------------------------------------------------- --values


def load(folder: Path) -> dict[str, dict[str, Any]]:
    return {p.name: yaml.safe_load(p.read_text()) for p in folder.glob("*.yaml")}


def test_plan_values_drive_k8s(example_repo: Path, tmp_path: Path) -> None:
    (tmp_path / "max.json").write_text(json.dumps({"max_rate": 400.0}))
    values = tmp_path / "values.json"
    done = run_ferry("plan", "--rate", "2000", "--sla", "p99<50ms", "--from", str(tmp_path / "max.json"),
                     "--cpu", "0.5", "--memory-mib", "300", "--values", str(values))  # fmt: skip
    assert done.returncode == 0, done.stderr
    plan = json.loads(values.read_text())
    done = run_ferry("k8s", str(example_repo), "--image", IMAGE, "--values", str(values), "--keda", "--knative",
                     "-o", str(tmp_path / "k8s"))  # fmt: skip
    assert done.returncode == 0, done.stderr
    # the kustomization leaves the Knative Service out: the printed next step says how to apply it instead
    out = tmp_path / "k8s"
    assert f"kubectl apply -f {out}/00-namespace.yaml -f {out}/10-configmap.yaml -f {out}/65-knative-service.yaml" in (
        " ".join(done.stderr.split())
    ), done.stderr
    objs = load(tmp_path / "k8s")
    deployment = objs["20-deployment.yaml"]
    assert deployment["spec"]["replicas"] == plan["replicas"] == 12
    assert deployment["spec"]["template"]["spec"]["containers"][0]["resources"] == plan["resources"]
    assert plan["resources"] == {
        "requests": {"cpu": "500m", "memory": "300Mi"},
        "limits": {"cpu": "1000m", "memory": "450Mi"},
    }
    scaled = objs["40-scaledobject.yaml"]["spec"]
    auto = plan["autoscaling"]
    assert (scaled["minReplicaCount"], scaled["maxReplicaCount"]) == (auto["minReplicas"], auto["maxReplicas"])
    thresholds = {t.get("name", t["type"]): t["metadata"] for t in scaled["triggers"]}
    assert thresholds["requests-in-system"]["threshold"] == str(auto["targetConcurrencyPerReplica"]) == "14"
    assert thresholds["request-rate"]["threshold"] == "280"  # 400 req/s x 0.7
    assert thresholds["cpu"]["value"] == str(auto["targetCPUUtilizationPercentage"])
    knative_annotations = objs["65-knative-service.yaml"]["spec"]["template"]["metadata"]["annotations"]
    assert knative_annotations["autoscaling.knative.dev/target"] == "14"
    p99 = objs["81-prometheusrule.yaml"]["spec"]["groups"][0]["rules"][2]["expr"]
    assert p99.endswith("> 0.05")  # the plan's SLA, p99<50ms
    # An option given on the command line wins over the file; the rest still comes from it.
    done = run_ferry("k8s", str(example_repo), "--image", IMAGE, "--values", str(values), "--replicas", "13",
                     "--cpu", "2,4", "-o", str(tmp_path / "k8s2"))  # fmt: skip
    assert done.returncode == 0, done.stderr
    objs = load(tmp_path / "k8s2")
    assert objs["20-deployment.yaml"]["spec"]["replicas"] == 13
    resources = objs["20-deployment.yaml"]["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources["requests"] == {"cpu": "2", "memory": "300Mi"}
    hpa = objs["40-hpa.yaml"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (13, 24)
    assert hpa["metrics"][0]["resource"]["target"]["averageUtilization"] == 70


def test_bad_values_are_refused_with_the_place_named(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"unknown field `minReplica` - at `\$.autoscaling`"):
        parse_values(b'{"autoscaling": {"minReplica": 3}}', "v.json")
    with pytest.raises(SpecError, match=r"Expected `int \| null`, got `str` - at `\$.replicas`"):
        parse_values(b'{"replicas": "3"}', "v.json")
    with pytest.raises(SpecError, match=r"replicas 3 and autoscaling\.minReplicas 4 differ"):
        parse_values(b'{"replicas": 3, "autoscaling": {"minReplicas": 4}}', "v.json")
    bad = tmp_path / "values.json"
    bad.write_text('{"replica": 3}')
    done = run_ferry("k8s", "--image", IMAGE, "--model-uri", "s3://b/m", "--values", str(bad))
    assert done.returncode == 1 and "Traceback" not in done.stderr and "unknown field `replica`" in done.stderr
    done = run_ferry("k8s", "--image", IMAGE, "--model-uri", "s3://b/m", "--values", str(tmp_path / "none.json"))
    assert done.returncode == 1 and "none.json" in done.stderr and "Traceback" not in done.stderr
    done = run_ferry("k8s", "--image", IMAGE, "--model-uri", "s3://b/m", "--scale-to-zero")
    assert done.returncode == 1 and "add --knative" in done.stderr
    done = run_ferry("k8s", "--image", IMAGE, "--model-uri", "s3://b/m", "--keda", "--in-flight-target", "8")
    assert done.returncode == 1 and "--keda replaces the HPA" in done.stderr


# ---------------------------------------------------------------------------------------------------- README


def readme_block(heading: str) -> list[str]:
    """The commands of the first bash block under ``heading``, continuation lines joined, comments dropped."""
    section = manual_text().split(heading, 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    lines = [line.split("#", 1)[0].rstrip() for line in block.replace("\\\n", " ").splitlines()]
    return [line for line in lines if line.strip()]


def test_readme_k8s_addons_commands_run(example_repo: Path, tmp_path: Path) -> None:
    (tmp_path / "models").symlink_to(example_repo)
    (tmp_path / "max.json").write_text(json.dumps({"max_rate": 400.0}))  # what `ferry loadtest --find-max` writes
    commands = readme_block("### 5. Knative, KEDA and Prometheus Operator")
    assert any("--keda" in c for c in commands) and any("--knative" in c for c in commands)
    for command in commands:
        argv = shlex.split(command.replace("IMAGE:TAG", IMAGE))
        assert argv[0] == "ferry", command
        done = run_ferry(*argv[1:], cwd=tmp_path)
        assert done.returncode == 0, f"{command}\n{done.stderr}"
    for folder in ("k8s", "knative"):
        for obj in load(tmp_path / folder).values():
            if obj["apiVersion"].split("/")[0] in ("serving.knative.dev", "keda.sh", "monitoring.coreos.com"):
                strict(obj)
