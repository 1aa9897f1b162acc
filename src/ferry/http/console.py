"""The web console: one self-contained page at ``/`` (no CDN, no external assets) and its live numbers at ``/stats``.

The page lists every model (version, state, schema, labels), draws request rate, p50/p99 latency
and error rate from ``/stats`` as small charts, and builds a "try it" form from each model's input
schema that calls the model's predict route.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ferry.http.mounting import mount
from ferry.http.responses import json_response
from ferry.observability.stats import StatsWindow
from ferry.serving.metrics import Metrics

# The page may run only its own inline script and style, and talk only to this server.
CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@cache
def page() -> bytes:
    return resources.files("ferry.http").joinpath("static/console.html").read_bytes()


async def console(request: Request) -> Response:
    """The console page (``GET /`` from a browser)."""
    headers = {"content-security-policy": CSP, "cache-control": "no-cache"}
    return Response(page(), media_type="text/html; charset=utf-8", headers=headers)


def routes(metrics: Metrics) -> list[Route]:
    window = StatsWindow(metrics)

    async def stats(request: Request) -> Response:
        return json_response(window.stats(), headers={"cache-control": "no-store"})

    return mount("console", {"stats": stats})
