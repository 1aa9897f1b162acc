"""``ferry gateway``: the routes file as a standalone reverse proxy in front of model services."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console(stderr=True)


def gateway_command(
    routes: Annotated[Path, typer.Argument(help="Routes file (routes.yaml) with `services` for each model.")],
    port: Annotated[int, typer.Option(help="HTTP port.")] = 8080,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    health_interval: Annotated[float, typer.Option(help="Seconds between upstream health checks.")] = 5.0,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body accepted (413 past it).")] = 8 * 1024 * 1024,
    tracing: Annotated[
        str,
        typer.Option(help="OpenTelemetry traces: otlp, console or a JSON-lines file (off: traceparent passes as is)."),
    ] = "",
) -> None:
    """Route requests to upstream services by the rules in ROUTES: pooling, retries, circuit breakers."""
    from ferry.cli.errors import fail
    from ferry.errors import FerryError
    from ferry.routing.gateway import GatewaySettings, run_gateway
    from ferry.routing.spec import load_routes

    try:
        parsed = load_routes(routes)
        for target in parsed.targets():
            parsed.upstream_for(target)  # every model target needs a service: refuse now, not per request
        if tracing:
            _check_tracing(tracing)
    except FerryError as exc:
        fail(exc.message)
    settings = GatewaySettings(host, port, max_body_bytes, health_interval, tracing=tracing)
    console.print(f"gateway on http://{host}:{port}  ({len(parsed.rules)} rules from {routes})")
    run_gateway(parsed, settings)


def _check_tracing(target: str) -> None:
    try:
        from ferry.observability.tracing import check_target
    except ImportError as exc:
        raise typer.BadParameter(str(exc), param_hint="--tracing") from None
    check_target(target)


def register(app: typer.Typer) -> None:
    app.command("gateway")(gateway_command)
