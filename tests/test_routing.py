"""The routes file and the router: parsing errors, matches, weights, stickiness; in process with a slow shadow."""

from __future__ import annotations

import importlib.util
import re
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from ferry.routing.router import Router, RouteRequest
from ferry.routing.shadow import compare
from ferry.routing.spec import RoutesError, parse_routes

ROUTES: dict[str, Any] = {
    "name": "router",
    "rules": [
        {"name": "mountain", "match": {"headers": {"target": "mountain"}}, "to": {"model": "plants"}},
        {
            "name": "beta",
            "match": {"headers": {"x-beta": {"present": True}}},
            "to": {"model": "general", "version": "2"},
        },
        {"name": "regex", "match": {"headers": {"user-agent": {"regex": "curl/.*"}}}, "to": {"model": "curl"}},
        {"name": "query", "match": {"query": {"arm": "b"}}, "to": {"model": "b"}},
        {"name": "gold", "match": {"body": {"customer.tier": "gold", "items.0.n": 2}}, "to": {"model": "gold"}},
        {"name": "path", "match": {"path": {"prefix": "/v2/"}}, "to": {"model": "v2"}},
    ],
    "default": {"to": {"model": "general"}},
}


def decide(
    routes: dict[str, Any], path: str = "/predict", headers: Any = None, query: Any = None, body: Any = None
) -> str:
    decision = Router(parse_routes(routes)).decide(RouteRequest(path, headers or {}, query or {}, body))
    assert decision is not None
    return f"{decision.rule}->{decision.target.key}"


def test_header_query_body_and_path_matches() -> None:
    assert decide(ROUTES, headers={"target": "mountain"}) == "mountain->plants"
    assert decide(ROUTES, headers={"target": "valley"}) == "default->general"
    assert decide(ROUTES, headers={"x-beta": ""}) == "beta->general@2"
    assert decide(ROUTES, headers={"user-agent": "curl/8.5"}) == "regex->curl"
    assert decide(ROUTES, headers={"user-agent": "not curl/8.5"}) == "default->general"  # regex is a full match
    assert decide(ROUTES, query={"arm": "b"}) == "query->b"
    assert decide(ROUTES, body={"customer": {"tier": "gold"}, "items": [{"n": 2}]}) == "gold->gold"
    assert decide(ROUTES, body={"customer": {"tier": "gold"}, "items": [{"n": 3}]}) == "default->general"
    assert decide(ROUTES, body={"customer": "gold"}) == "default->general"
    assert decide(ROUTES, path="/v2/models/router/infer") == "path->v2"
    # The first rule that matches wins, in file order.
    assert decide(ROUTES, headers={"target": "mountain", "x-beta": "1"}) == "mountain->plants"


def test_a_request_no_rule_matches_without_a_default_is_not_routed() -> None:
    routes = {**ROUTES, "default": None}
    assert Router(parse_routes(routes)).decide(RouteRequest("/predict", {}, {}, None)) is None


SPLIT = {
    "rules": [],
    "default": {
        "split": [{"model": "m", "version": "1", "weight": 90}, {"model": "m", "version": "2", "weight": 10}],
        "sticky": "X-User-Id",
    },
}


def test_weights_hold_within_statistical_tolerance() -> None:
    router = Router(parse_routes(SPLIT), seed=1)
    counts = Counter(router.decide(RouteRequest("/p", {}, {})).target.key for _ in range(4000))  # type: ignore[union-attr]
    # 10% of 4000 is 400 with a standard deviation of 19: 5 sigma either way.
    assert abs(counts["m@2"] - 400) < 95, counts
    by_user = Counter(
        router.decide(RouteRequest("/p", {"x-user-id": f"user-{i}"}, {})).target.key  # type: ignore[union-attr]
        for i in range(4000)
    )
    assert abs(by_user["m@2"] - 400) < 95, by_user


def test_assignment_is_sticky_per_key_across_routers() -> None:
    first, second = Router(parse_routes(SPLIT), seed=1), Router(parse_routes(SPLIT), seed=2)
    for i in range(200):
        headers = {"x-user-id": f"user-{i}"}
        arms = {first.decide(RouteRequest("/p", headers, {})).target.key for _ in range(5)}  # type: ignore[union-attr]
        assert len(arms) == 1
        assert arms == {second.decide(RouteRequest("/p", headers, {})).target.key}  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        (
            [{"name": "a", "to": {"model": "x"}, "match": {"headers": {"h": {"regex": "("}}}}],
            r"rule 'a' \(rules\[0\]\): invalid regex.*`match.headers.h.regex`",
        ),
        (
            [{"name": "a", "to": {"model": "x"}, "split": [{"model": "y"}]}],
            r"rule 'a' \(rules\[0\]\): give exactly one of `to` or `split`",
        ),
        (
            [{"name": "a", "to": {"model": "x", "url": "http://h"}}],
            r"rule 'a' \(rules\[0\]\): a target needs exactly one of `model` or `url` - at `to`",
        ),
        (
            [{"name": "a", "to": {"model": "x"}, "match": {"header": {}}}],
            r"rule 'a' \(rules\[0\]\): Object contains unknown field `header` - at `match`",
        ),
        (
            [{"name": "a", "to": {"model": "x"}, "sticky": "X-User"}],
            r"rule 'a' \(rules\[0\]\): `sticky` needs a weighted `split` - at `sticky`",
        ),
        (
            [{"name": "a", "split": [{"model": "x", "weight": 0}]}],
            r"rule 'a' \(rules\[0\]\): the weights of a split must add up",
        ),
        (
            [{"name": "a", "to": {"model": "x"}}, {"name": "a", "to": {"model": "y"}}],
            r"rule 'a' \(rules\[1\]\): the name 'a' is already taken",
        ),
        ([{"to": {"model": "x"}}], r"rules\[0\]: every rule needs a `name`"),
        (
            [{"name": "a", "to": {"model": "x", "weight": "heavy"}}],
            r"rule 'a' \(rules\[0\]\): Expected `int`, got `str` - at `to.weight`",
        ),
    ],
)
def test_a_bad_routes_file_names_the_rule_and_the_field(rules: list[Any], message: str) -> None:
    with pytest.raises(RoutesError, match=message):
        parse_routes({"rules": rules}, source="routes.yaml")


def test_compare_labels_and_numbers() -> None:
    assert compare({"prediction": "cat"}, {"prediction": "cat"}).agree
    assert not compare({"prediction": "cat"}, {"prediction": "dog"}).agree
    numbers = compare({"predictions": [1.0, 2.0]}, {"predictions": [1.0, 2.5]})
    assert not numbers.agree and numbers.difference == pytest.approx(0.5)
    v2 = {"outputs": [{"name": "o", "data": [3.0]}]}
    assert compare(v2, {"prediction": 3.0}).agree


SLOW_MODEL = '''
import time


class Slow:
    """The identity, a second late."""

    def predict(self, batch):
        time.sleep(1.5)
        return batch
'''


@pytest.fixture(scope="module")
def routed_repo(image_repo: Path, example_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ferry.builder import build

    repo = tmp_path_factory.mktemp("routed")
    for name in ("general", "plants"):
        shutil.copytree(image_repo / name, repo / name)
    shutil.copytree(example_repo / "score", repo / "score")
    source = repo.parent / "slow_model.py"
    source.write_text(SLOW_MODEL)
    spec = importlib.util.spec_from_file_location("slow_model", source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    manifest = yaml.safe_load((repo / "score" / "1" / "ferry.yaml").read_text())
    build(module.Slow, "slow", repo, version="1", input_schema=manifest["input"], output_schema=manifest["output"])
    return repo


def test_serve_routes_by_header_on_every_protocol_and_a_slow_shadow_never_delays(
    routed_repo: Path, tmp_path: Path, serve: Any
) -> None:
    routes = {
        "name": "classifier",
        "rules": [
            {"name": "mountain", "match": {"headers": {"target": "mountain"}}, "to": {"model": "plants"}},
            {
                "name": "mirror",
                "match": {"headers": {"x-shadow": "on"}},
                "to": {"model": "score"},
                "shadow": {"model": "slow"},
            },
        ],
        "default": {"to": {"model": "general"}},
    }
    path = tmp_path / "routes.yaml"
    path.write_text(yaml.safe_dump(routes))
    server = serve(str(routed_repo), "--routes", str(path), "--grpc-port", "0", "--model-threads", "2")
    with httpx.Client(base_url=server.url, timeout=10) as client:
        assert client.get("/label").json() == ["circle", "square", "triangle", "stripes"]
        assert client.get("/label", headers={"target": "mountain"}).json() == ["flower", "building"]
        assert client.get("/predict/test", headers={"target": "mountain"}).json() == {"prediction": "flower"}
        assert client.get("/predict/test").json() == {"prediction": "circle"}
        native = client.post(
            "/models/classifier/predict",
            headers={"target": "mountain"},
            json={"image_data": _sample(routed_repo, "plants")},
        )
        assert native.json()["prediction"] == "flower"
        assert native.headers["x-ferry-route"] == "mountain" and native.headers["x-ferry-target"] == "plants"
        v2_body = {
            "inputs": [
                {"name": "image_data", "datatype": "BYTES", "shape": [1], "data": [_sample(routed_repo, "general")]}
            ]
        }
        v2 = client.post("/v2/models/classifier/infer", json=v2_body)
        assert v2.status_code == 200 and v2.json()["model_name"] == "general"
        assert client.post(
            "/v1/models/classifier:predict",
            headers={"target": "mountain"},
            json={"instances": [{"image_data": _sample(routed_repo, "plants")}]},
        ).json()["predictions"] == ["flower"]

        started = time.perf_counter()
        answer = client.post("/models/classifier/predict", headers={"x-shadow": "on"}, json=[[1.0, 2.0]])
        assert time.perf_counter() - started < 1.0, "the 1.5 s shadow delayed the client"
        assert answer.json() == {"predictions": [[1.0, 2.0]]}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            metrics = client.get("/metrics").text
            if 'ferry_shadow_comparisons_total{outcome="agree",rule="mirror"} 1.0' in metrics:
                break
            time.sleep(0.1)
        assert 'ferry_shadow_comparisons_total{outcome="agree",rule="mirror"} 1.0' in metrics
        latency = re.search(
            r'ferry_route_latency_seconds_count\{role="shadow",rule="mirror",target="slow"\} (\S+)', metrics
        )
        assert latency is not None and float(latency.group(1)) == 1.0
        assert 'ferry_routed_requests_total{rule="mountain",target="plants"}' in metrics


def test_serve_refuses_a_bad_routes_file_naming_the_rule(routed_repo: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "routes.yaml"
    path.write_text(
        yaml.safe_dump(
            {"rules": [{"name": "broken", "to": {"model": "x"}, "match": {"headers": {"h": {"regex": "["}}}}]}
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "ferry", "serve", str(routed_repo), "--routes", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    stderr = " ".join(result.stderr.split())  # rich wraps long lines
    assert "rule 'broken' (rules[0]): invalid regex" in stderr and "at `match.headers.h.regex`" in stderr


def _sample(repo: Path, name: str) -> str:
    manifest = yaml.safe_load((repo / name / "1" / "ferry.yaml").read_text())
    return str(manifest["sample_input"]["image_data"])
