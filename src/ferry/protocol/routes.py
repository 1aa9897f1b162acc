"""The one route table: every HTTP route Ferry serves, with its protocol, handler and documentation.

Everything that needs the routes reads this list: the predict dispatcher builds its paths from it
(``ferry.http.dispatch``), the Starlette endpoints mount their handlers on it, the OpenAPI document
describes it (``ferry.http.docs``), tracing labels a request's protocol by it, the router finds the
paths that name a model by it (``ferry.routing.router``), a bundle's compatibility routes may not
take its prefixes (``ferry.http.compat``), and auth leaves its public routes open (``ferry.auth``).
``tests/test_route_table.py`` fails when the app serves a route this table does not hold, or the reverse.

A path template names its parameters ``{name}`` (the model), ``{version}`` and ``{namespace}``
(Seldon's); a ``{name}`` followed by ``:`` stops at the colon (KServe's ``/v1/models/{name}:predict``).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Literal

# Who answers a route: the predict dispatcher (``handler`` is a codec), or a Starlette endpoint group
# (``handler`` is the endpoint's name there). ``admin`` and ``console`` are served when switched on.
Group = Literal["predict", "endpoints", "protocols", "docs", "admin", "console", "root"]


@dataclass(frozen=True, slots=True)
class HttpRoute:
    protocol: str  # native, v2, kserve, seldon, mlflow: the OpenAPI tag and the tracing label
    method: str
    path: str  # the template
    group: Group
    handler: str  # predict: the codec's name (``native:explain``: its explain codec); else the endpoint's
    summary: str = ""  # the OpenAPI operation's summary; empty: left out of the document
    public: bool = False  # answered without a token (``/`` only while no bundle declares a route there)

    @property
    def pattern(self) -> re.Pattern[str]:
        return _pattern(self.path)

    @property
    def params(self) -> tuple[str, ...]:
        return tuple(re.findall(r"{(\w+)}", self.path))


def _versioned(
    protocol: str, method: str, suffix: str, group: Group, handler: str, summary: str = ""
) -> list[HttpRoute]:
    """A per-model route for the default version and the one pinned to ``{version}``."""
    base = "/v2/models/{name}" if protocol == "v2" else "/models/{name}"
    return [
        HttpRoute(protocol, method, f"{base}{suffix}", group, handler, summary),
        HttpRoute(protocol, method, f"{base}/versions/{{version}}{suffix}", group, handler, summary),
    ]


SELDON_VERSIONS = ("v1.0", "v0.1")
_EXPLAIN = "Explain: each input column's exact contribution to the raw score"

ROUTES: tuple[HttpRoute, ...] = (
    # -- the server's own: liveness, readiness, the models, metrics ------------------------------------
    HttpRoute("native", "GET", "/health", "endpoints", "health", "Liveness", public=True),
    HttpRoute("native", "GET", "/ready", "endpoints", "ready", "Readiness of every model", public=True),
    HttpRoute("mlflow", "GET", "/ping", "endpoints", "ready"),  # `mlflow models serve`'s readiness probe
    HttpRoute("native", "GET", "/models", "endpoints", "models", "Served models and their versions"),
    HttpRoute("native", "GET", "/metrics", "endpoints", "metrics", "Prometheus metrics", public=True),
    *_versioned("native", "GET", "/metadata", "endpoints", "model/metadata", "Model metadata"),
    *_versioned("native", "GET", "/labels", "endpoints", "model/labels", "Class labels"),
    *_versioned("native", "GET", "/health", "endpoints", "model/health", "Model health"),
    *_versioned("native", "GET", "/predict/test", "predict", "sample", "Predict the bundle's sample input"),
    # -- Open Inference Protocol v2 and KServe v1: health and metadata ---------------------------------
    HttpRoute("v2", "GET", "/v2/health/live", "protocols", "v2_live", "Server live", public=True),
    HttpRoute("v2", "GET", "/v2/health/ready", "protocols", "v2_ready", "Server ready", public=True),
    HttpRoute("v2", "GET", "/v2", "protocols", "v2_server_metadata", "Server metadata"),
    HttpRoute("v2", "GET", "/v2/", "protocols", "v2_server_metadata"),
    *_versioned("v2", "GET", "", "protocols", "v2:metadata", "Model metadata"),
    *_versioned("v2", "GET", "/ready", "protocols", "v2:ready", "Model ready"),
    *_versioned("v2", "GET", "/config", "protocols", "v2:config"),
    HttpRoute("v2", "GET", "/v2/models", "protocols", "v2_models"),
    HttpRoute("v2", "POST", "/v2/repository/index", "protocols", "v2_repository_index"),
    HttpRoute("kserve", "GET", "/v1/models", "protocols", "v1_models", "Served models"),
    HttpRoute("kserve", "GET", "/v1/models/{name}", "protocols", "v1:status", "Model status"),
    # -- predict and explain, one codec each (``ferry.http.dispatch``) ---------------------------------
    *_versioned("native", "POST", "/predict", "predict", "native", "Predict: a record, records, a row or rows"),
    *_versioned("v2", "POST", "/infer", "predict", "v2", "Inference"),
    *_versioned("native", "POST", "/explain", "predict", "native:explain", _EXPLAIN),
    HttpRoute("mlflow", "POST", "/models/{name}/invocations", "predict", "mlflow", "Predict (MLflow scoring)"),
    HttpRoute("mlflow", "POST", "/invocations", "predict", "mlflow", "Predict (MLflow scoring)"),  # one model
    HttpRoute("kserve", "POST", "/v1/models/{name}:predict", "predict", "kserve", "Predict"),
    HttpRoute("kserve", "POST", "/v1/models/{name}:explain", "predict", "kserve:explain", _EXPLAIN),
    *(
        HttpRoute("seldon", "POST", f"{prefix}/api/{version}/predictions", "predict", "seldon", summary)
        for version in SELDON_VERSIONS
        for prefix, summary in (
            ("/seldon/{name}", "Predict (SeldonMessage)"),
            ("/seldon/{namespace}/{name}", "Predict (SeldonMessage)"),
            ("", "Predict (SeldonMessage)"),  # names no model: the one served
        )
    ),
    # -- the document, the console, the admin API, the root ------------------------------------------
    HttpRoute("native", "GET", "/openapi.json", "docs", "openapi", public=True),
    HttpRoute("native", "GET", "/docs", "docs", "docs", public=True),
    HttpRoute("native", "GET", "/docs/static/{asset}", "docs", "asset", public=True),
    HttpRoute("native", "GET", "/stats", "console", "stats"),
    HttpRoute("native", "POST", "/models/{name}/load", "admin", "load"),
    HttpRoute("native", "POST", "/models/{name}/unload", "admin", "unload"),
    HttpRoute("native", "POST", "/models/{name}/reload", "admin", "reload"),
    HttpRoute("native", "GET", "/", "root", "root", public=True),  # the console page, or KServe's liveness
)

PREDICT: tuple[HttpRoute, ...] = tuple(r for r in ROUTES if r.group == "predict")

# Paths no bundle may declare a compatibility route on: every first segment of the table but ``/``.
RESERVED_PREFIXES: tuple[str, ...] = tuple(
    dict.fromkeys("/" + r.path.split("/")[1].partition("{")[0] for r in ROUTES if r.path != "/")
)
# Public without condition (any method), and the public templates by their literal start.
PUBLIC_PATHS = frozenset(r.path for r in ROUTES if r.public and "{" not in r.path and r.path != "/")
PUBLIC_PREFIXES = tuple(r.path.partition("{")[0] for r in ROUTES if r.public and "{" in r.path)
# What comes before ``{name}`` in the paths that name a model; those that also pin ``{version}``.
NAME_PREFIXES: tuple[str, ...] = tuple(
    dict.fromkeys(p for p, _, _ in (r.path.partition("{name}") for r in ROUTES if "{name}" in r.path) if "{" not in p)
)
VERSION_PREFIXES = frozenset(r.path.partition("{name}")[0] for r in ROUTES if "{version}" in r.path)


def group(name: Group) -> list[HttpRoute]:
    return [r for r in ROUTES if r.group == name]


@functools.lru_cache(maxsize=4096)
def protocol_of(path: str) -> str:
    """The protocol of a predict path (``/invocations`` is MLflow's); ``compat`` for a bundle's own route."""
    for route in PREDICT:
        if route.pattern.fullmatch(path):
            return route.protocol
    return "compat"


@functools.cache
def _pattern(template: str) -> re.Pattern[str]:
    out, at = [], 0
    for param in re.finditer(r"{(\w+)}", template):
        out.append(re.escape(template[at : param.start()]))
        stops = "/:" if template[param.end() : param.end() + 1] == ":" else "/"
        out.append(f"(?P<{param[1]}>[^{stops}]+)")
        at = param.end()
    out.append(re.escape(template[at:]))
    return re.compile("".join(out))
