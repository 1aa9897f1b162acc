"""The route table (``ferry.protocol.routes``) is what the app serves: no route outside it, none of it missing.

The app is built as ``ferry serve`` builds it (admin API and console on), then walked: Starlette's own
routes and the predict dispatcher's exact table and templates, each matched against the table's rows.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.routing import Route

from ferry.examples import build_examples
from ferry.http import compat
from ferry.http.app import create_app
from ferry.http.dispatch import _CODECS, FerryApp
from ferry.protocol.routes import PREDICT, ROUTES, HttpRoute, protocol_of
from ferry.settings import Settings


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> FerryApp:
    repo = tmp_path_factory.mktemp("two")
    build_examples(repo, ["iris", "diabetes"])
    return create_app(Settings(repo=repo, admin=True, console=True, auth_tokens="secret"))


def _row(method: str, path: str) -> HttpRoute:
    """The one row of the table that serves ``method path``; a failure names the path otherwise."""
    rows = [r for r in ROUTES if r.method == method and (r.path == path or r.pattern.fullmatch(path))]
    exact = [r for r in rows if r.path == path]
    assert len(exact or rows) == 1, f"{method} {path} is served, but the route table has {exact or rows} for it"
    return (exact or rows)[0]


def test_every_starlette_route_is_a_row_and_every_row_is_mounted(app: FerryApp) -> None:
    declared = {(spec.method, spec.path) for _, spec in compat.declared(app.plane.registry)}
    mounted = set()
    for route in app.app.routes:
        assert isinstance(route, Route), route
        for method in (route.methods or set()) - {"HEAD"}:
            if (method, route.path) not in declared:  # a bundle's own compatibility route
                mounted.add((method, route.path))
    rows = {(r.method, r.path) for r in ROUTES if r.group != "predict"}
    assert mounted - rows == set(), "served by Starlette but not in the route table"
    assert rows - mounted == set(), "in the route table but not served"


def test_every_predict_path_the_dispatcher_serves_is_a_row_with_its_codec(app: FerryApp) -> None:
    declared = {spec.path for _, spec in compat.declared(app.plane.registry)}
    served = 0
    for method, by_path in app.routes.table().items():
        for path, target in by_path.items():
            if path in declared:
                continue
            row = _row(method, path)
            assert row.group == "predict", f"{method} {path} is dispatched but the table has it for {row.group}"
            assert target.codec is _CODECS[row.handler], f"{method} {path}: not the codec of {row.handler}"
            served += 1
    models = app.plane.registry.models
    expected = 0
    for row in PREDICT:  # each row once per model (and per version, if it pins one), once if it names none
        if "namespace" not in row.params:
            per_model = [len(models[name]) if "version" in row.params else 1 for name in models]
            expected += sum(per_model) if "name" in row.params else 1
    assert len(models) == 2 and served == expected


@pytest.mark.parametrize("row", PREDICT, ids=lambda r: f"{r.method} {r.path}")
def test_every_predict_row_is_dispatched_to_its_codec(app: FerryApp, row: HttpRoute) -> None:
    values = {"name": "iris", "version": "1", "namespace": "team"}
    path = row.path.format(**{p: values[p] for p in row.params})
    target = app.routes.find(row.method, path)
    assert target is not None, f"{row.method} {path} is in the route table but not dispatched"
    assert target.codec is _CODECS[row.handler]
    assert target.explain == row.handler.endswith(":explain")
    if "name" in row.params:
        assert (target.model, target.version) == ("iris", values["version"] if "version" in row.params else None)
        unknown = app.routes.find(row.method, path.replace("iris", "nosuchmodel"))  # the template: the model's 404
        assert unknown is not None and unknown.model == "nosuchmodel"
    else:
        assert target.refusal is not None and "2 models are served" in str(target.refusal)


def test_auth_leaves_exactly_the_public_rows_open(app: FerryApp) -> None:
    assert app.auth is not None
    for row in ROUTES:
        path = row.path.format(name="iris", version="1", namespace="team", asset="swagger-ui.css")
        assert app.auth.requires(row.method, path) is not row.public, f"{row.method} {path}"


def test_compat_may_not_claim_a_rows_first_segment() -> None:
    firsts = {"/" + r.path.split("/")[1] for r in ROUTES if r.path != "/"}
    assert {"/invocations", "/ping", "/v2", "/seldon", "/api", "/docs"} <= firsts
    assert all(p.startswith(compat.RESERVED_PREFIXES) for p in firsts)


def test_tracing_labels_each_predict_row_with_its_protocol() -> None:
    for row in PREDICT:
        path = row.path.format(name="iris", version="1", namespace="team")
        assert protocol_of(path) == row.protocol, path
    assert protocol_of("/invocations") == "mlflow"
    assert protocol_of("/predict") == "compat"  # a bundle's own route


def test_in_process_routing_rewrites_every_path_that_names_a_model() -> None:
    from ferry.routing.router import named_paths, rewrite_path
    from ferry.routing.spec import Target

    pattern = named_paths("router")
    for row in ROUTES:
        if "name" not in row.params or "namespace" in row.params:
            continue
        path = row.path.format(name="router", version="7")
        rewritten = rewrite_path(pattern, path, Target(model="iris", version="2"))
        assert rewritten is not None, path
        versioned = row.path.startswith(("/models/", "/v2/models/"))  # the paths that can pin a version
        expected = row.path.format(name="iris/versions/2" if versioned else "iris", version="7")
        assert rewritten == expected, path


def test_a_route_added_outside_the_table_fails_the_walk(tmp_path: Path) -> None:
    """The walk sees what the app serves: a route mounted by hand is caught."""
    build_examples(tmp_path, ["iris"])
    stray = create_app(Settings(repo=tmp_path))
    stray.app.router.routes.append(Route("/extra", lambda request: None, methods=["GET"]))
    with pytest.raises(AssertionError, match="not in the route table"):
        test_every_starlette_route_is_a_row_and_every_row_is_mounted(stray)
