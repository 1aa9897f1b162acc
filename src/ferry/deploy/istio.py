"""Render a routes file as Istio objects: a VirtualService with the same matches, weights and mirror,
and a DestinationRule per host whose targets name versions (one subset per version).

A model target is a Kubernetes service: the host of its ``services`` URL, else the model's name.
Istio routes on headers, query parameters and the path; a body match cannot be expressed and is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from ferry.errors import DeployError
from ferry.routing.spec import Route, RoutesFile, StringMatch, Target

Obj = dict[str, Any]
API_VERSION = "networking.istio.io/v1"
ANY = {"regex": ".*"}  # matches any value of a parameter that is present


def destination(routes: RoutesFile, target: Target) -> Obj:
    url = target.url
    if target.model is not None:
        service = routes.services.get(target.key) or routes.services.get(target.model)
        url = service.url if service is not None else None
    out: Obj
    if url is None:
        out = {"host": target.model}
    else:
        parts = urlsplit(url)
        out = {"host": parts.hostname}
        if parts.port is not None:
            out["port"] = {"number": parts.port}
    if target.version is not None:
        out["subset"] = subset_name(target.version)
    return out


def subset_name(version: str) -> str:
    return "v" + "".join(c if c.isalnum() else "-" for c in version.lower())


def _string_match(condition: str | StringMatch) -> Obj:
    if isinstance(condition, str):
        return {"exact": condition}
    for op in ("exact", "prefix", "regex"):
        value = getattr(condition, op)
        if value is not None:
            return {op: value}
    return dict(ANY)


def _match(name: str, route: Any) -> list[Obj]:
    match = route.match
    if match.body:
        raise DeployError(
            f"rule '{name}': Istio cannot match on the JSON body (at `match.body`); "
            "match a header instead, or run the file with `ferry gateway`"
        )
    out: Obj = {}
    headers = {k.lower(): c for k, c in match.headers.items()}
    present = {k: _string_match(c) for k, c in headers.items() if not _absent(c)}
    absent = {k: dict(ANY) for k, c in headers.items() if _absent(c)}
    if present:
        out["headers"] = present
    if absent:
        out["withoutHeaders"] = absent
    if match.query:
        out["queryParams"] = {k: _string_match(c) for k, c in match.query.items()}
    if match.path is not None:
        out["uri"] = _string_match(match.path)
    return [out] if out else []


def _absent(condition: str | StringMatch) -> bool:
    return isinstance(condition, StringMatch) and condition.present is False


def istio_weights(split: list[Target]) -> list[int]:
    """Integer percentages adding up to exactly 100, in proportion to the split's weights."""
    total = sum(t.weight for t in split)
    exact = [100 * t.weight / total for t in split]
    weights = [int(w) for w in exact]
    by_remainder = sorted(range(len(split)), key=lambda i: exact[i] - weights[i], reverse=True)
    for i in by_remainder[: 100 - sum(weights)]:
        weights[i] += 1
    return weights


def _http_route(routes: RoutesFile, name: str, route: Route, match: list[Obj]) -> Obj:
    out: Obj = {"name": name}
    if match:
        out["match"] = match
    if route.to is not None:
        out["route"] = [{"destination": destination(routes, route.to)}]
    else:
        weights = istio_weights(route.split)
        out["route"] = [
            {"destination": destination(routes, t), "weight": w} for t, w in zip(route.split, weights, strict=True)
        ]
    if route.shadow is not None:
        out["mirror"] = destination(routes, route.shadow)
        out["mirrorPercentage"] = {"value": 100.0}
    return out


def render_virtual_service(routes: RoutesFile, namespace: str, gateways: list[str] | None = None) -> Obj:
    http = [_http_route(routes, r.name, r, _match(r.name, r)) for r in routes.rules]
    if routes.default is not None:
        http.append(_http_route(routes, "default", routes.default, []))
    spec: Obj = {"hosts": [routes.name], "http": http}
    if gateways:
        spec["gateways"] = gateways
    return {
        "apiVersion": API_VERSION,
        "kind": "VirtualService",
        "metadata": {"name": routes.name, "namespace": namespace},
        "spec": spec,
    }


def render_destination_rules(routes: RoutesFile, namespace: str) -> list[Obj]:
    """One DestinationRule per host that has versioned targets; subsets select pods by their ``version`` label."""
    versions: dict[str, set[str]] = {}
    for target in routes.targets():
        if target.version is not None:
            versions.setdefault(destination(routes, target)["host"], set()).add(target.version)
    return [
        {
            "apiVersion": API_VERSION,
            "kind": "DestinationRule",
            "metadata": {"name": host.split(".")[0], "namespace": namespace},
            "spec": {
                "host": host,
                "subsets": [{"name": subset_name(v), "labels": {"version": v}} for v in sorted(found)],
            },
        }
        for host, found in sorted(versions.items())
    ]


def render_istio(routes: RoutesFile, namespace: str, gateways: list[str] | None = None) -> list[Obj]:
    return [render_virtual_service(routes, namespace, gateways), *render_destination_rules(routes, namespace)]


def write_istio(routes: RoutesFile, namespace: str, out: Path, gateways: list[str] | None = None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "70-istio.yaml"
    path.write_text(
        "---\n".join(yaml.safe_dump(o, sort_keys=False) for o in render_istio(routes, namespace, gateways)),
        encoding="utf-8",
    )
    return path
