"""The real image, built from the Dockerfile `ferry containerize` wrote, run as the Deployment runs it, and in compose.

Needs a Docker engine (scripts/ci-docker starts one). No registry is reachable, so the Dockerfile's base image is a
stand-in built once by tests/docker/standin-base.sh (debootstrap bookworm + Debian's python3) and cached.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import free_port
from ferry.builder import build
from ferry.deploy import dockerfile, k8s
from ferry.deploy.fetch import write_index
from ferry.deploy.spec import DEFAULT_BASE_IMAGE, GRPC_PORT, HTTP_PORT, DeploySpec

pytestmark = pytest.mark.timeout(900)

HERE = Path(__file__).parent
# The stand-ins' Debian root file systems, one per base image (tests/docker/standin-base.sh)
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ferry"
IMAGE = "ferry-test/examples:ci"
LOAD_IMAGE = "ferry-test/model-load:ci"


def docker(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def skip(reason: str) -> None:
    print(f"\nSKIPPING docker image tests: {reason}")  # shown with -rs and in CI logs, never a silent pass
    pytest.skip(reason)


@pytest.fixture(scope="session")
def base_image() -> str:
    if shutil.which("docker") is None:
        skip("no docker client on PATH (run scripts/ci-docker)")
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, check=False)
    if info.returncode != 0:
        skip(f"docker engine not reachable (run scripts/ci-docker): {info.stderr.strip()[-300:]}")
    reason = standin(DEFAULT_BASE_IMAGE)
    if reason:
        skip(reason)
    return DEFAULT_BASE_IMAGE


def standin(tag: str) -> str:
    """Make the stand-in for base image ``tag`` (Debian bookworm with its Python); why not, or ''."""
    cache = CACHE_DIR / f"standin-{tag.replace(':', '-')}.tar"
    have = docker("image", "inspect", tag, check=False).returncode == 0
    if not have and not cache.is_file() and shutil.which("debootstrap") is None:
        return "no stand-in base image, no cached rootfs, and no debootstrap to build one"
    result = subprocess.run(
        [str(HERE / "docker" / "standin-base.sh"), tag, str(cache)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    return "" if result.returncode == 0 else f"could not build the stand-in base image: {result.stderr.strip()[-500:]}"


def build_image(
    repo: Path, context: Path, tag: str, include_models: bool, trust_code: bool = False, *build_args: str
) -> None:
    spec = dockerfile.image_spec_for(repo, tag, include_models=include_models, trust_code=trust_code)
    dockerfile.write_build_context(repo, context, spec)
    # Host networking for the build only: pip needs the index, and the sandbox's bridge has no NAT.
    arguments = [part for argument in build_args for part in ("--build-arg", argument)]
    docker("build", "--network", "host", *arguments, "--tag", tag, str(context))


@pytest.fixture(scope="session")
def drain_repo(example_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("drain-repo")
    shutil.copytree(example_repo, repo, dirs_exist_ok=True)
    module_spec = importlib.util.spec_from_file_location("slow_model", HERE / "docker" / "slow_model.py")
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    build(
        module.Slow,
        "slow",
        repo,
        version="1",
        input_schema={"kind": "tensor", "tensors": [{"name": "x", "dtype": "float64", "shape": [-1, -1]}]},
        output_schema={"kind": "tensor", "dtype": "float64", "shape": [-1, -1]},
    )
    return repo


@pytest.fixture(scope="session")
def model_image(base_image: str, drain_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    # Ferry's own classes (the `score` example, the slow model): the operator trusts them, so the image does.
    build_image(drain_repo, tmp_path_factory.mktemp("ctx"), IMAGE, include_models=True, trust_code=True)
    return IMAGE


@pytest.fixture(scope="session")
def load_image(base_image: str, example_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    build_image(example_repo, tmp_path_factory.mktemp("ctx-load"), LOAD_IMAGE, include_models=False, trust_code=True)
    return LOAD_IMAGE


class Container:
    """``docker run`` with the Deployment's security context, limits and ConfigMap environment."""

    def __init__(self, image: str, spec: DeploySpec, extra_env: dict[str, str] | None = None) -> None:
        deployment = k8s.render_deployment(spec)
        pod = deployment["spec"]["template"]["spec"]
        server = pod["containers"][0]
        sc = server["securityContext"]
        limits = server["resources"]["limits"]
        env = {**k8s.render_configmap(spec)["data"], **(extra_env or {})}
        argv = ["run", "--detach", "--user", f"{sc['runAsUser']}:{sc['runAsGroup']}"]
        argv += ["--read-only"] if sc["readOnlyRootFilesystem"] else []
        argv += ["--cap-drop", "ALL"] if sc["capabilities"]["drop"] == ["ALL"] else []
        argv += ["--security-opt", "no-new-privileges"] if not sc["allowPrivilegeEscalation"] else []
        argv += ["--memory", limits["memory"].replace("Gi", "g").replace("Mi", "m"), "--cpus", limits["cpu"]]
        for mount in server["volumeMounts"]:
            argv += ["--tmpfs", f"{mount['mountPath']}:uid={sc['runAsUser']},gid={sc['runAsGroup']}"]
        for key, value in env.items():
            argv += ["--env", f"{key}={value}"]
        self.id = docker(*argv, image).stdout.strip()
        self.ip = docker("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", self.id)
        self.url = f"http://{self.ip.stdout.strip()}:{env['FERRY_PORT']}"
        self.grpc_target = f"{self.ip.stdout.strip()}:{env['FERRY_GRPC_PORT']}"

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if docker("inspect", "-f", "{{.State.Running}}", self.id).stdout.strip() != "true":
                break
            time.sleep(0.5)
        raise AssertionError(f"container not ready:\n{self.logs()}")

    def logs(self) -> str:
        result = docker("logs", self.id, check=False)
        return result.stdout + result.stderr

    def remove(self) -> None:
        docker("rm", "--force", self.id, check=False)


@pytest.fixture
def containers() -> Iterator[list[Container]]:
    started: list[Container] = []
    yield started
    for container in started:
        container.remove()


def grpc_ready_and_infer(target: str) -> tuple[bool, list[float]]:
    import grpc

    from ferry.grpc import inference_pb2, inference_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        ready = stub.ServerReady(inference_pb2.ServerReadyRequest(), timeout=10).ready
        tensor = inference_pb2.ModelInferRequest.InferInputTensor(name="X", datatype="FP64", shape=[1, 2])
        tensor.contents.fp64_contents.extend([1.5, 2.5])
        reply = stub.ModelInfer(inference_pb2.ModelInferRequest(model_name="score", inputs=[tensor]), timeout=10)
        return ready, list(reply.outputs[0].contents.fp64_contents)


def test_image_runs_as_non_root_serves_http_and_grpc_and_drains(model_image: str, containers: list[Container]) -> None:
    spec = DeploySpec(image=model_image)
    container = Container(model_image, spec)
    containers.append(container)
    container.wait_ready()
    assert httpx.get(container.url + "/health").json() == {"health": "ok"}
    models = {m["name"] for m in httpx.get(container.url + "/models").json()["models"]}
    assert models == {"iris", "diabetes", "score", "reviews", "slow"}
    iris = httpx.post(container.url + "/models/iris/predict", json={"instances": [{"length": 1.4, "width": 0.2}]})
    assert iris.status_code == 200 and iris.json()["predictions"] == ["setosa"], iris.text
    # non-root, and the root filesystem really is read-only
    result = docker("exec", container.id, "python", "-c", "open('/probe', 'w')", check=False)
    assert result.returncode != 0 and "Read-only file system" in result.stderr
    uid = docker("exec", container.id, "python", "-c", "import os; print(os.getuid(), os.getgid())").stdout.split()
    assert uid == ["10001", "10001"]
    assert "ferry serve" in docker("exec", container.id, "cat", "/proc/1/cmdline").stdout.replace("\0", " ")
    labels = docker("inspect", "-f", "{{json .Config.Labels}}", model_image).stdout
    assert '"io.ferry.model.iris.1":"sha256:' in labels
    health = docker("inspect", "-f", "{{json .Config.Healthcheck.Test}}", model_image).stdout
    assert "/health" in health
    if importlib.util.find_spec("ferry.grpc.server") is not None:
        ready, values = grpc_ready_and_infer(container.grpc_target)
        assert ready and values == [1.5, 2.5]
    else:
        print(f"\nNOTE: ferry.grpc.server is absent; gRPC port {GRPC_PORT} not exercised")
    # drain: a slow request in flight when SIGTERM arrives still completes, then the process exits 0
    answers: list[httpx.Response] = []
    slow = threading.Thread(
        target=lambda: answers.append(
            httpx.post(container.url + "/models/slow/predict", json={"instances": [[7.0, 8.0]]}, timeout=30)
        )
    )
    slow.start()
    time.sleep(0.4)
    docker("kill", "--signal", "SIGTERM", container.id)
    slow.join(30)
    exit_code = docker("wait", container.id, timeout=spec.drain_timeout + 10).stdout.strip()
    assert answers and answers[0].status_code == 200 and answers[0].json()["predictions"] == [[7.0, 8.0]]
    assert exit_code == "0", container.logs()
    assert "Shutting down" in container.logs()


def test_the_image_builds_and_serves_on_python_3_13(
    base_image: str, example_repo: Path, tmp_path: Path, containers: list[Container]
) -> None:
    """``--build-arg PYTHON_VERSION=3.13``: the same Dockerfile builds on python:3.13-slim-bookworm and serves."""
    reason = standin("python:3.13-slim-bookworm")
    if reason:
        skip(reason)
    image = "ferry-test/examples-py313:ci"
    build_image(example_repo, tmp_path / "ctx", image, True, True, "PYTHON_VERSION=3.13")
    version = docker(
        "run", "--rm", "--entrypoint", "/opt/venv/bin/python", image, "-c", "import sys; print(sys.version)"
    )
    assert version.stdout.startswith("3.13."), version.stdout
    container = Container(image, DeploySpec(image=image))
    containers.append(container)
    container.wait_ready()
    iris = httpx.post(container.url + "/models/iris/predict", json={"instances": [{"length": 1.4, "width": 0.2}]})
    assert iris.status_code == 200 and iris.json()["predictions"] == ["setosa"], iris.text
    ready, values = grpc_ready_and_infer(container.grpc_target)
    assert ready and values == [1.5, 2.5]


def test_model_load_image_fetches_from_http_and_serves(
    load_image: str, example_repo: Path, tmp_path: Path, containers: list[Container]
) -> None:
    import http.server

    site = tmp_path / "site"
    shutil.copytree(example_repo, site)
    write_index(site)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(site), **kwargs)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("0.0.0.0", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        # The bridge's gateway is the host as containers see it; docker leaves it implicit (the subnet's first host).
        subnet = docker("network", "inspect", "-f", "{{(index .IPAM.Config 0).Subnet}}", "bridge").stdout.strip()
        gateway = next(ipaddress.ip_network(subnet).hosts())
        uri = f"http://{gateway}:{server.server_address[1]}/"
        spec = DeploySpec(image=load_image, model_uri=uri)
        # The Deployment fetches in an init container; `docker run` has none, so the server fetches itself.
        container = Container(load_image, spec, extra_env={"FERRY_MODEL_URI": uri})
        containers.append(container)
        container.wait_ready()
        models = {m["name"] for m in httpx.get(container.url + "/models").json()["models"]}
        assert models == {"iris", "diabetes", "score", "reviews"}
        answer = httpx.post(container.url + "/models/iris/predict", json={"instances": [{"length": 6.0, "width": 2.5}]})
        assert answer.status_code == 200 and answer.json()["predictions"] == ["virginica"], answer.text
        assert int(container.url.rsplit(":", 1)[1]) == HTTP_PORT
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------------------------------------------- compose

NGINX_IMAGE = "ferry-test/nginx:ci"


@pytest.fixture(scope="session")
def compose_cli() -> list[str]:
    """Debian's docker-compose 1.29 (what scripts/ci-docker installs), else the compose plugin."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if docker("compose", "version", check=False).returncode == 0:
        return ["docker", "compose"]
    skip("no docker-compose and no compose plugin (scripts/ci-docker installs Debian's docker-compose)")
    return []


@pytest.fixture(scope="session")
def nginx_image(base_image: str) -> str:
    """nginx from Debian on the stand-in base: nginx:*-alpine cannot be pulled here."""
    docker("build", "--network", "host", "--build-arg", f"BASE_IMAGE={base_image}", "--tag", NGINX_IMAGE,
           "--file", str(HERE / "docker" / "nginx.Dockerfile"), str(HERE / "docker"))  # fmt: skip
    return NGINX_IMAGE


def ferry_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "ferry", *args], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"ferry {' '.join(args)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer 200 within {timeout:g}s")


def test_compose_serves_through_nginx_and_keeps_serving_while_a_replica_is_killed(
    compose_cli: list[str], model_image: str, nginx_image: str, drain_repo: Path, tmp_path: Path
) -> None:
    http_port, grpc_port = free_port(), free_port()
    ferry_cli("compose", str(drain_repo), "--image", model_image, "--replicas", "3", "--port", str(http_port),
              "--grpc-port", str(grpc_port), "--nginx-image", nginx_image, "-o", str(tmp_path))  # fmt: skip
    project = f"ferrytest{os.getpid()}"
    compose = [*compose_cli, "--project-name", project, "--file", str(tmp_path / "docker-compose.yml")]

    def run(*args: str, timeout: float = 300) -> str:
        result = subprocess.run([*compose, *args], capture_output=True, text=True, timeout=timeout, check=False)
        assert result.returncode == 0, f"{' '.join(args)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        return result.stdout

    try:
        run("up", "--detach")  # nginx starts only once the replicas are healthy (depends_on: service_healthy)
        front = f"http://127.0.0.1:{http_port}"
        wait_http(front + "/ready", timeout=120)
        replicas = run("ps", "--quiet", "ferry").split()
        assert len(replicas) == 3
        # Through nginx, round-robin: every replica answers some of 30 predictions.
        for _ in range(30):
            answer = httpx.post(front + "/models/iris/predict", json={"length": 1.4, "width": 0.2}, timeout=10)
            assert answer.status_code == 200 and answer.json() == {"prediction": "setosa"}, answer.text
        for replica in replicas:
            ip = docker("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", replica)
            metrics = httpx.get(f"http://{ip.stdout.strip()}:{HTTP_PORT}/metrics", timeout=5).text
            served = [line for line in metrics.splitlines() if line.startswith('ferry_requests_total{model="iris"')]
            assert served, f"replica {replica[:12]} served none of the 30 requests through nginx"
        if importlib.util.find_spec("ferry.grpc.server") is not None:
            ready, values = grpc_ready_and_infer(f"127.0.0.1:{grpc_port}")  # gRPC through nginx's h2c proxy
            assert ready and values == [1.5, 2.5]
        # Kill one replica (SIGKILL: no drain) in the middle of a steady load through nginx: nothing is lost.
        results = tmp_path / "load.json"
        load = subprocess.Popen(
            [sys.executable, "-m", "ferry", "loadtest", front, "--route", "POST /models/iris/predict",
             "--body", '{"length":1.4,"width":0.2}', "--rate", "40", "--duration", "6s", "--json", str(results)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        time.sleep(2.5)
        docker("kill", replicas[0])
        _, stderr = load.communicate(timeout=120)
        assert load.returncode == 0, stderr
        summary = json.loads(results.read_text())
        assert summary["status_counts"] == {"200": 240}, (summary["status_counts"], summary["errors"])
    finally:
        subprocess.run([*compose, "down", "--volumes", "--timeout", "5"], capture_output=True, timeout=120, check=False)


CLASS_WITH_LIGHTGBM = """\
from pathlib import Path

import lightgbm

from featurizer import features

HERE = Path(__file__).parent


class Stars:
    def load(self):
        self.booster = lightgbm.Booster(model_file=str(HERE / "stars.txt"))

    def predict(self, X):
        return self.booster.predict(features(X))
"""


def _class_bundle_repo(folder: Path, requirements: str | None) -> Path:
    """A user's class that imports lightgbm and its own featurizer.py, built with the CLI."""
    import lightgbm
    import numpy as np

    folder.mkdir()
    (folder / "featurizer.py").write_text("import numpy as np\n\n\ndef features(X):\n    return np.asarray(X) * 2.0\n")
    (folder / "stars.py").write_text(CLASS_WITH_LIGHTGBM)
    x = np.array([[0.0], [1.0], [2.0], [3.0], [4.0], [5.0]] * 4)
    model = lightgbm.LGBMRegressor(n_estimators=5, min_child_samples=1, verbose=-1).fit(x * 2.0, x[:, 0])
    model.booster_.save_model(str(folder / "stars.txt"))
    args = ["build", "stars.py:Stars", "--name", "stars", "--repo", "models", "--sample", "[[1.0]]"]
    args += ["--include", "featurizer.py", "--include", "stars.txt"]
    if requirements is not None:
        (folder / "requirements.txt").write_text(requirements)
        args += ["--requirements", "requirements.txt"]
    built = subprocess.run([sys.executable, "-m", "ferry", *args], cwd=folder, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    return folder / "models"


def test_a_class_bundle_brings_its_requirements_and_a_missing_one_fails_the_build(
    base_image: str, tmp_path: Path, containers: list[Container]
) -> None:
    # The operator trusts the class (containerize --trust-code): the build's verify imports it, the image serves it.
    repo = _class_bundle_repo(tmp_path / "with", "lightgbm\nnumpy\n")
    build_image(repo, tmp_path / "ctx", "ferry-test/class:ci", include_models=True, trust_code=True)
    container = Container("ferry-test/class:ci", DeploySpec(image="ferry-test/class:ci", trust_code=True))
    containers.append(container)
    container.wait_ready()
    answer = httpx.post(container.url + "/models/stars/predict", json=[[4.0]])
    assert answer.status_code == 200 and answer.json()["predictions"][0] == pytest.approx(4.0, abs=1.0), answer.text

    # Without its requirements the image must not build: the last step loads every bundle.
    repo = _class_bundle_repo(tmp_path / "without", None)
    spec = dockerfile.image_spec_for(repo, "ferry-test/class-broken:ci", include_models=True, trust_code=True)
    dockerfile.write_build_context(repo, tmp_path / "ctx-broken", spec)
    result = docker(
        "build", "--network", "host", "--tag", "ferry-test/class-broken:ci", str(tmp_path / "ctx-broken"), check=False
    )
    assert result.returncode != 0
    assert "No module named 'lightgbm'" in result.stdout + result.stderr
