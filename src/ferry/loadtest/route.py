"""Load on any route, e.g. a bundle's compatibility ``POST /predict``: bodies go out exactly as given.

With ``--body`` or a JSON-lines ``--data`` file no metadata is read, so any JSON API can be load-tested;
otherwise the model's sample (or generated) records are sent as native bodies.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ferry.errors import LoadTestError
from ferry.loadtest.data import load_records, read_json_records
from ferry.loadtest.protocols import dumps
from ferry.loadtest.schema import ModelSchema

BODYLESS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})
_ROUTE = re.compile(r"^(GET|HEAD|POST|PUT|PATCH|DELETE|OPTIONS)\s+(/\S*)$")


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # may carry a query string: GET /prediction/?f=0.05

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


def parse_route(text: str) -> Route:
    match = _ROUTE.match(text.strip())
    if not match:
        raise LoadTestError(f"--route '{text}': expected METHOD /path, e.g. 'POST /predict' or 'GET /isAlive'")
    return Route(match.group(1), match.group(2))


def route_bodies(route: Route, body: str | None, data: str | None, schema: Callable[[], ModelSchema]) -> list[bytes]:
    """The bodies to cycle through; ``schema`` is only called when the model's own records are needed."""
    if route.method in BODYLESS:
        if body is not None or data is not None:
            raise LoadTestError(f"--route '{route}' sends no body: drop --body/--data, put inputs in the query")
        return [b""]
    if body is not None:
        try:
            json.loads(body)
        except ValueError as exc:
            raise LoadTestError(f"--body is not JSON: {exc}") from None
        return [body.encode()]
    if data is not None and Path(data).suffix.lower() in (".jsonl", ".json") and Path(data).is_file():
        records = read_json_records(Path(data))
        if not records:
            raise LoadTestError(f"--data {data}: no records in the file")
    else:
        records = load_records(data, schema())
    return [dumps(record) for record in records]
