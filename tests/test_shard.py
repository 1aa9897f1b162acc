"""``ferry k8s --shard``: the model header set from every path form (by the real gateway), valid Istio and core
objects that agree with each other, and a replica that serves any model lazily under the Deployment's settings.
"""

from __future__ import annotations

import asyncio
import re
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
import yaml
from aiohttp import web
from tests.conftest import ServerProcess, free_port, run_ferry
from tests.manual import manual_text
from tests.test_gateway import in_process_gateway

from ferry.deploy.shard import _PATH_FORMS
from ferry.routing.router import MODEL_HEADER, model_from_path, model_header_value
from ferry.routing.spec import parse_routes
from ferry.serving.budget import parse_size
from ferry.settings import Settings

IMAGE = "registry.example.com/team/ferry-examples:1.4.2"
K8S_VERSIONS = ["1.29.0", "1.33.0"]

PATHS = {
    "/models/iris/predict": "iris",
    "/models/iris/versions/2/predict": "iris",
    "/models/iris": "iris",
    "/v2/models/iris/infer": "iris",
    "/v2/models/iris/versions/1/infer": "iris",
    "/v2/models/iris/ready": "iris",
    "/v1/models/iris:predict": "iris",
    "/v1/models/iris": "iris",
    "/seldon/iris/api/v1.0/predictions": "iris",
    "/seldon/ml/iris/api/v0.1/predictions": "iris",
    "/models/iris2/predict": "iris2",
    "/v2/models/iris.v2-b/infer": "iris.v2-b",
}
NO_MODEL = ["/predict", "/models", "/v2/models", "/v1/models", "/health", "/ready", "/v2/health/ready", "/metrics"]


# ---------------------------------------------------------------------------------------------------- the header


@pytest.mark.parametrize("path", list(PATHS))
def test_the_model_is_read_from_every_path_form(path: str) -> None:
    assert model_from_path(path) == PATHS[path]


@pytest.mark.parametrize("path", NO_MODEL)
def test_paths_without_a_model_name_none(path: str) -> None:
    assert model_from_path(path) is None


def test_the_virtual_service_regex_matches_exactly_the_paths_of_its_model() -> None:
    """Each model's route (an RE2 regex; this subset reads the same in Python) agrees with the gateway's parse."""
    for model in ("iris", "iris2", "iris.v2-b"):
        regex = _PATH_FORMS.format(m=re.escape(model))
        for path in [*PATHS, *NO_MODEL, "/models/irisx/predict", "/v1/models/iri:predict"]:
            assert bool(re.fullmatch(regex, path)) == (model_from_path(path) == model), (model, path)


def run_gateway(routes: dict[str, Any], check: Callable[[aiohttp.ClientSession, str], Any]) -> list[dict[str, str]]:
    """Two real upstreams (they record what reached them) behind a real ``Gateway``; returns the records."""
    seen: list[dict[str, str]] = []

    def recorder(name: str) -> Callable[[web.Request], Any]:
        async def record(request: web.Request) -> web.Response:
            await request.read()
            seen.append({"upstream": name, "path": request.path, "model": request.headers.get(MODEL_HEADER)})
            return web.json_response({"ok": True})

        return record

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"health": "ok"})

    async def main() -> None:
        runners, urls = [], {}
        for name in ("a", "b"):
            app = web.Application()
            app.router.add_get("/health", health)
            app.router.add_route("*", "/{tail:.*}", recorder(name))
            runner = web.AppRunner(app)
            await runner.setup()
            port = free_port()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            runners.append(runner)
            urls[name] = f"http://127.0.0.1:{port}"
        spec = parse_routes({**routes, "services": {n: {"url": u} for n, u in urls.items()}})
        try:
            async with in_process_gateway(spec) as url, aiohttp.ClientSession() as session:
                await check(session, url)
                for _ in range(100):  # the shadow's copy is sent off the client's path
                    if any(s["upstream"] == "b" and "shadowed" in s["path"] for s in seen):
                        break
                    await asyncio.sleep(0.02)
        finally:
            for runner in runners:
                await runner.cleanup()

    asyncio.run(main())
    return seen


def test_the_gateway_sets_the_model_header_from_the_forwarded_path() -> None:
    routes = {
        "name": "classifier",
        "rules": [
            {
                "name": "shadowed",
                "match": {"path": {"prefix": "/shadowed"}},
                "to": {"model": "a"},
                "shadow": {"model": "b"},
            }
        ],
        "default": {"to": {"model": "a"}},
    }

    async def check(session: aiohttp.ClientSession, url: str) -> None:
        for path in PATHS:
            # a client's own (wrong) header is replaced by the model the path names
            async with session.post(url + path, json={}, headers={"X-Ferry-Model": "wrong"}) as response:
                assert response.status == 200, path
        async with session.post(url + "/models/classifier/predict", json={}) as response:  # the router's own name
            assert response.status == 200
        async with session.post(url + "/predict", json={}) as response:  # a root route: the target's model
            assert response.status == 200
        async with session.post(url + "/shadowed", json={}) as response:
            assert response.status == 200
        # a name that may not stand in a header as it is (non-ASCII, a space) is percent-encoded, not a 500
        async with session.post(url + "/models/café x/predict", json={}) as response:
            assert response.status == 200

    seen = run_gateway(routes, check)
    primary = [s for s in seen if s["upstream"] == "a"]
    assert [(s["path"], s["model"]) for s in primary[: len(PATHS)]] == list(PATHS.items())
    by_path = {s["path"]: s for s in primary}
    assert by_path["/models/a/predict"]["model"] == "a"  # /models/classifier/... rewritten to the target
    assert by_path["/predict"]["model"] == "a"
    assert by_path["/shadowed"]["model"] == "a"
    assert by_path["/models/café x/predict"]["model"] == "caf%C3%A9%20x"
    assert model_header_value("a\r\nx-evil: 1") == "a%0D%0Ax-evil%3A%201"  # no header injection
    shadow = [s for s in seen if s["upstream"] == "b"]
    assert shadow == [{"upstream": "b", "path": "/shadowed", "model": "b"}]  # the shadow's own model


# ---------------------------------------------------------------------------------------------------- k8s objects


def istio_strict(obj: dict[str, Any]) -> None:
    """Valid under cloudcoil's Istio models, and nothing dropped on the way (no field Istio lacks)."""
    from cloudcoil.models.istio.networking import v1

    model = {"VirtualService": v1.VirtualService, "DestinationRule": v1.DestinationRule}[obj["kind"]]
    assert model.model_validate(obj, strict=True).model_dump(by_alias=True, exclude_none=True) == obj


@pytest.fixture(scope="module")
def sharded(example_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    out = tmp_path_factory.mktemp("shard")
    done = run_ferry("k8s", str(example_repo), "--image", IMAGE, "-n", "ml", "--replicas", "4",
                     "--shard", "--max-memory", "768MiB", "-o", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    return {p.name: yaml.safe_load(p.read_text()) for p in out.glob("*.yaml")}


def test_shard_objects_are_valid(sharded: dict[str, dict[str, Any]]) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    kustomization = sharded["kustomization.yaml"]
    assert {"70-shard-destinationrule.yaml", "71-shard-virtualservice.yaml"} <= set(kustomization["resources"])
    for name, obj in sharded.items():
        if name == "kustomization.yaml":
            continue
        if obj["apiVersion"].startswith("networking.istio.io/"):
            istio_strict(obj)
        else:
            for version in K8S_VERSIONS:
                kubernetes_validate.validate(obj, version, strict=True)


def test_shard_objects_agree_with_each_other_and_the_gateway(
    sharded: dict[str, dict[str, Any]], example_repo: Path
) -> None:
    rule, virtual = sharded["70-shard-destinationrule.yaml"], sharded["71-shard-virtualservice.yaml"]
    service, deployment = sharded["30-service.yaml"], sharded["20-deployment.yaml"]
    host = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
    assert rule["spec"]["host"] == host and virtual["spec"]["hosts"] == [host]
    assert rule["metadata"]["namespace"] == virtual["metadata"]["namespace"] == service["metadata"]["namespace"]
    # the hash covers every Service port, on the header the gateway and the VirtualService set
    settings = rule["spec"]["trafficPolicy"]["portLevelSettings"]
    assert sorted(s["port"]["number"] for s in settings) == sorted(p["port"] for p in service["spec"]["ports"])
    assert {s["loadBalancer"]["consistentHash"]["httpHeaderName"] for s in settings} == {MODEL_HEADER}
    routes = virtual["spec"]["http"]
    models = sorted(p.name for p in example_repo.iterdir() if p.is_dir())
    assert [r["name"] for r in routes] == [f"model:{m}" for m in models] + ["default"]
    http_port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "http")
    for route, model in zip(routes, models, strict=False):
        assert route["headers"]["request"]["set"] == {MODEL_HEADER: model}
        assert route["match"][0]["port"] == http_port
        assert re.fullmatch(route["match"][0]["uri"]["regex"], f"/v2/models/{model}/infer")
    assert all(r["route"] == [{"destination": {"host": host}}] for r in routes)
    # the pods behind the host are the Deployment's: the Service selects its pod labels
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    # the server gets the budget (a real setting, below the memory limit) and loads nothing at start
    server = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in server["env"]}
    settings_from_env = Settings.from_env(env)
    assert settings_from_env.max_memory == "768MiB" and settings_from_env.preload is False
    assert parse_size(env["FERRY_MAX_MEMORY"]) < parse_size(server["resources"]["limits"]["memory"])


def test_shard_options_are_checked(example_repo: Path, tmp_path: Path) -> None:
    base = ("k8s", str(example_repo), "--image", IMAGE, "-o", str(tmp_path))
    for extra, message in (
        (["--shard"], "--shard needs --max-memory"),
        (["--max-memory", "1GiB"], "add --shard"),
        (["--shard", "--max-memory", "2GiB"], "must be below the memory limit 1Gi"),
        (["--shard", "--max-memory", "lots"], "must be a size like 1GiB"),
        (["--shard", "--max-memory", "512MiB", "--knative"], "drop --knative and --kserve"),
    ):
        done = run_ferry(*base, *extra)
        assert done.returncode == 1 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
    # a routes file's versions of the sharded Service would need a second DestinationRule on its host
    routes = tmp_path / "routes.yaml"
    routes.write_text(yaml.safe_dump({"name": "front", "default": {"to": {"model": "ferry", "version": "1"}}}))
    done = run_ferry(*base, "--shard", "--max-memory", "512MiB", "--routes", str(routes))
    assert done.returncode == 1 and "Istio takes one per host" in done.stderr, done.stderr
    routes.write_text(yaml.safe_dump({"name": "front", "default": {"to": {"model": "other", "version": "1"}}}))
    done = run_ferry(*base, "--shard", "--max-memory", "512MiB", "--routes", str(routes))
    assert done.returncode == 0, done.stderr
    # model-load mode: no names to route by, so the DestinationRule only
    done = run_ferry("k8s", "--image", IMAGE, "--model-uri", "s3://b/m", "--shard", "--max-memory", "512MiB",
                     "-o", str(tmp_path / "load"))  # fmt: skip
    assert done.returncode == 0, done.stderr
    names = {p.name for p in (tmp_path / "load").iterdir()}
    assert "70-shard-destinationrule.yaml" in names and "71-shard-virtualservice.yaml" not in names


def test_a_replica_with_the_deployments_settings_serves_any_model_lazily(
    sharded: dict[str, dict[str, Any]], example_repo: Path
) -> None:
    """Whatever replica the hash picks answers: ready with nothing loaded, then only the models asked for."""
    server_spec = sharded["20-deployment.yaml"]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in server_spec["env"]}
    server = ServerProcess([str(example_repo)], env=env)
    try:
        listing = httpx.get(server.url + "/models").json()["models"]
        assert {v["state"] for m in listing for v in m["versions"]} == {"UNLOADED"}
        body = {"length": 5.1, "width": 2.4}
        response = httpx.post(
            server.url + "/models/iris/predict", json=body, headers={MODEL_HEADER: "iris"}, timeout=30
        )
        assert response.status_code == 200 and response.json()["prediction"] == "virginica", response.text
        listing = httpx.get(server.url + "/models").json()["models"]
        states = {m["name"]: {v["state"] for v in m["versions"]} for m in listing}
        assert states["iris"] == {"READY"} and all(s == {"UNLOADED"} for n, s in states.items() if n != "iris")
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------------------- README


def test_readme_shard_block_runs(example_repo: Path, tmp_path: Path) -> None:
    section = manual_text().split("### 6. Sharding a large repository over replicas", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#", 1)[0].strip() for line in block.splitlines()]
    commands = [c for c in commands if c]
    assert commands[1].startswith("kubectl apply")  # needs a cluster with Istio: not run here
    (tmp_path / "models").symlink_to(example_repo)
    done = run_ferry(*shlex.split(commands[0].replace("IMAGE:TAG", IMAGE))[1:], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    objects = {p.name: yaml.safe_load(p.read_text()) for p in (tmp_path / "k8s").glob("*-shard-*.yaml")}
    assert len(objects) == 2
    for obj in objects.values():
        istio_strict(obj)
