"""``ferry gateway``: the routes file as a standalone reverse proxy in front of model services."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from ferry.cli.options import check_tracing, settings_command
from ferry.settings import GatewaySettings

if TYPE_CHECKING:
    from ferry.routing.spec import RoutesFile

console = Console(stderr=True)


def gateway(
    routes: Annotated[Path, typer.Argument(help="Routes file (routes.yaml) with `services` for each model.")],
    *,
    settings: GatewaySettings,
) -> None:
    """Route requests to upstream services by the rules in ROUTES: pooling, retries, circuit breakers."""
    from ferry.cli.errors import run
    from ferry.routing.spec import load_routes
    from ferry.server.gateway import run_gateway

    def check() -> RoutesFile:
        parsed = load_routes(routes)
        for target in parsed.targets():
            parsed.upstream_for(target)  # every model target needs a service: refuse now, not per request
        return parsed

    parsed = run(check)
    if settings.tracing:
        check_tracing(settings.tracing)
    console.print(f"gateway on http://{settings.host}:{settings.port}  ({len(parsed.rules)} rules from {routes})")
    run_gateway(parsed, settings)


def register(app: typer.Typer) -> None:
    app.command("gateway")(settings_command(gateway, GatewaySettings))
