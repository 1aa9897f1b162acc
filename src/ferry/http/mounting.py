"""Starlette routes from the route table (``ferry.protocol.routes``): a group's rows, each on its named handler."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ferry.protocol.routes import Group, group

Endpoint = Callable[[Request], Awaitable[Response]]


def mount(name: Group, handlers: Mapping[str, Endpoint]) -> list[Route]:
    """Every row of group ``name``; a row whose handler is missing, or a handler no row names, is a bug."""
    rows = group(name)
    named = {row.handler for row in rows}
    if named != set(handlers):
        only_one = sorted(set(handlers) ^ named)
        raise LookupError(f"route group {name}: handlers {only_one} are in the table or the code, not both")
    return [Route(row.path, handlers[row.handler], methods=[row.method]) for row in rows]
