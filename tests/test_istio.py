"""The Istio objects of ``ferry k8s --routes``: valid against the Istio API schema, and the same routing as the file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from ferry.deploy.istio import istio_weights, render_istio
from ferry.errors import DeployError
from ferry.routing.spec import RoutesFile, parse_routes

ROUTES: dict[str, Any] = {
    "name": "classifier",
    "services": {"plants": {"url": "http://plants.models.svc.cluster.local:8000"}},
    "rules": [
        {"name": "mountain", "match": {"headers": {"Target": "mountain"}}, "to": {"model": "plants"}},
        {
            "name": "beta",
            "match": {
                "headers": {"x-beta": {"present": True}, "x-old": {"present": False}},
                "query": {"arm": {"prefix": "b"}},
            },
            "to": {"model": "general", "version": "2"},
        },
        {
            "name": "api",
            "match": {"path": {"regex": "/v2/.*"}},
            "to": {"model": "general"},
            "shadow": {"model": "plants"},
        },
    ],
    "default": {
        "split": [{"model": "general", "version": "1", "weight": 2}, {"model": "general", "version": "2", "weight": 1}],
        "sticky": "X-User-Id",
        "shadow": {"model": "general", "version": "3"},
    },
}


def validate(obj: dict[str, Any]) -> None:
    """Strict validation by the Istio API models, and nothing dropped on the way (no unknown field)."""
    from cloudcoil.models.istio.networking import v1

    model = {"VirtualService": v1.VirtualService, "DestinationRule": v1.DestinationRule}[obj["kind"]]
    parsed = model.model_validate(obj, strict=True)
    assert parsed.model_dump(by_alias=True, exclude_none=True) == obj


def test_istio_objects_are_valid_and_carry_the_same_routing() -> None:
    routes = parse_routes(ROUTES)
    objects = render_istio(routes, "models")
    for obj in objects:
        validate(obj)
    service, rule = objects
    assert service["spec"]["hosts"] == ["classifier"]
    http = {h["name"]: h for h in service["spec"]["http"]}
    assert list(http) == ["mountain", "beta", "api", "default"]  # the file's order, the default last
    assert http["mountain"]["match"] == [{"headers": {"target": {"exact": "mountain"}}}]
    port = {"number": 8000}
    assert http["mountain"]["route"] == [{"destination": {"host": "plants.models.svc.cluster.local", "port": port}}]
    assert http["beta"]["match"] == [
        {
            "headers": {"x-beta": {"regex": ".*"}},
            "withoutHeaders": {"x-old": {"regex": ".*"}},
            "queryParams": {"arm": {"prefix": "b"}},
        }
    ]
    assert http["beta"]["route"] == [{"destination": {"host": "general", "subset": "v2"}}]
    assert http["api"]["match"] == [{"uri": {"regex": "/v2/.*"}}]
    assert http["api"]["mirror"]["host"] == "plants.models.svc.cluster.local"
    assert http["api"]["mirrorPercentage"] == {"value": 100.0}
    assert [(r["destination"]["subset"], r["weight"]) for r in http["default"]["route"]] == [("v1", 67), ("v2", 33)]
    assert http["default"]["mirror"] == {"host": "general", "subset": "v3"}
    assert rule["spec"] == {
        "host": "general",
        "subsets": [{"name": f"v{v}", "labels": {"version": v}} for v in ("1", "2", "3")],
    }
    _consistent(routes, http)


def _consistent(routes: RoutesFile, http: dict[str, Any]) -> None:
    """Every route of the file has its twin: same targets, same weight shares, same shadow."""
    for name, route in routes.routes():
        twin = http[name]
        targets = [route.to] if route.to is not None else route.split
        assert [d["destination"].get("subset") for d in twin["route"]] == [
            f"v{t.version}" if t.version else None for t in targets
        ]
        if route.split:
            total = sum(t.weight for t in route.split)
            for target, rendered in zip(route.split, twin["route"], strict=True):
                assert abs(rendered["weight"] - 100 * target.weight / total) < 1
        assert ("mirror" in twin) == (route.shadow is not None)


@pytest.mark.parametrize("weights", [[1, 1, 1], [90, 10], [1, 2, 3, 4, 5, 6, 7], [5]])
def test_weights_become_whole_percentages_adding_up_to_100(weights: list[int]) -> None:
    split = parse_routes({"default": {"split": [{"model": f"m{i}", "weight": w} for i, w in enumerate(weights)]}})
    assert split.default is not None
    assert sum(istio_weights(split.default.split)) == 100


def test_a_body_match_is_refused_naming_the_rule() -> None:
    routes = parse_routes({"rules": [{"name": "gold", "match": {"body": {"tier": "gold"}}, "to": {"model": "m"}}]})
    with pytest.raises(DeployError, match=r"rule 'gold': Istio cannot match on the JSON body \(at `match.body`\)"):
        render_istio(routes, "ns")


def test_ferry_k8s_routes_writes_the_istio_objects(example_repo: Path, tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(yaml.safe_dump(ROUTES))
    out = tmp_path / "k8s"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ferry",
            "k8s",
            str(example_repo),
            "--image",
            "ferry:1",
            "--routes",
            str(path),
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    documents = list(yaml.safe_load_all((out / "70-istio.yaml").read_text()))
    assert [d["kind"] for d in documents] == ["VirtualService", "DestinationRule"]
    assert documents == render_istio(parse_routes(ROUTES), "ferry")
