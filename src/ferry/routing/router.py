"""Pick the rule and the arm for one request: pure decisions, shared by ``ferry serve`` and ``ferry gateway``."""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from ferry.protocol.routes import NAME_PREFIXES, VERSION_PREFIXES
from ferry.routing.spec import Route, RoutesFile, StringMatch, Target

# The model a request is for, as a header: what a sharded deployment's consistent hash reads (``ferry k8s --shard``).
MODEL_HEADER = "x-ferry-model"
# The model's name in every path that names one: native (and its versions), Open Inference v2, KServe v1, Seldon.
_MODEL_IN_PATH = re.compile(
    r"^/(?:v2/)?models/(?P<native>[^/]+)(?:/|$)"
    r"|^/v1/models/(?P<kserve>[^/:]+)(?::|/|$)"
    r"|^/seldon/(?:[^/]+/)?(?P<seldon>[^/]+)/api/"
)

_MISSING = object()


@dataclass(frozen=True)
class RouteRequest:
    """What rules can look at. ``headers`` has lower-case names; ``body`` is the parsed JSON, or None."""

    path: str
    headers: Mapping[str, str]
    query: Mapping[str, str]
    body: Any = None


@dataclass(frozen=True)
class Decision:
    rule: str
    target: Target
    route: Route

    @property
    def shadow(self) -> Target | None:
        return self.route.shadow


def named_paths(name: str) -> re.Pattern[str]:
    """The paths that address the router by its own model name, on every HTTP protocol."""
    prefixes = "|".join(re.escape(prefix) for prefix in NAME_PREFIXES)  # from the route table
    return re.compile(rf"^({prefixes}){re.escape(name)}(?=$|/|:)")


def rewrite_path(pattern: re.Pattern[str], path: str, target: Target) -> str | None:
    """``/models/{router}/predict`` -> ``/models/{model}[/versions/{v}]/predict``; None if not a named path."""
    named = pattern.match(path)
    if named is None or target.model is None:
        return None
    prefix, middle = named.group(1), target.model
    if target.version is not None and prefix in VERSION_PREFIXES:
        middle += f"/versions/{target.version}"
    return prefix + middle + path[named.end() :]


def model_header_value(model: str) -> str:
    """The header's value for a model: its name, percent-encoded where a character may not stand in a header."""
    return quote(model, safe="")


def model_from_path(path: str) -> str | None:
    """``/v2/models/iris/versions/2/infer`` -> ``iris``; None for a path that names no model (``/predict``)."""
    match = _MODEL_IN_PATH.match(path)
    if match is None:
        return None
    return match.group("native") or match.group("kserve") or match.group("seldon")


class Router:
    """Rules in file order, the first whose conditions all hold wins; else the default, else None."""

    def __init__(self, routes: RoutesFile, seed: int | None = None) -> None:
        self.routes = routes
        self.named = routes.routes()
        self.needs_body = any(r.match.body for r in routes.rules)
        # The (lower-case) header names any rule or sticky split reads: a request's other headers need no decoding.
        stickies = [route.sticky for _, route in self.named if route.sticky]
        self.header_names = frozenset(
            [k.lower() for r in routes.rules for k in r.match.headers] + [s.lower() for s in stickies]
        )
        self._random = random.Random(seed)
        # Cumulative weights per route, computed once.
        self._cumulative = {name: _cumulative(route.split) for name, route in self.named if route.split}

    def decide(self, request: RouteRequest) -> Decision | None:
        for rule in self.routes.rules:
            if _matches(rule.match.headers, request.headers, lower=True) and self._rest(rule, request):
                return Decision(rule.name, self.pick(rule.name, rule, request.headers), rule)
        if self.routes.default is not None:
            default = self.routes.default
            return Decision("default", self.pick("default", default, request.headers), default)
        return None

    def _rest(self, rule: Any, request: RouteRequest) -> bool:
        match = rule.match
        if match.path is not None and not _condition(match.path, request.path):
            return False
        if not _matches(match.query, request.query, lower=False):
            return False
        return all(_body_condition(c, _field(request.body, path)) for path, c in match.body.items())

    def pick(self, name: str, route: Route, headers: Mapping[str, str]) -> Target:
        """The route's target; for a split, an arm by weight, the same arm for the same sticky key."""
        if route.to is not None:
            return route.to
        key = headers.get(route.sticky.lower()) if route.sticky else None
        point = _hash_point(f"{name}\0{key}") if key is not None else self._random.random()
        cumulative = self._cumulative[name]
        total = cumulative[-1]
        for target, upper in zip(route.split, cumulative, strict=True):
            if point * total < upper:
                return target
        return route.split[-1]


def _cumulative(split: list[Target]) -> list[int]:
    out, total = [], 0
    for target in split:
        total += target.weight
        out.append(total)
    return out


def _hash_point(key: str) -> float:
    """A stable point in [0, 1) for a key: the same user lands on the same arm, in every process."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _matches(conditions: Mapping[str, str | StringMatch], values: Mapping[str, str], lower: bool) -> bool:
    return all(_condition(c, values.get(k.lower() if lower else k)) for k, c in conditions.items())


def _condition(condition: str | StringMatch, value: str | None) -> bool:
    if isinstance(condition, str):
        return value == condition
    return condition.matches(value)


def _body_condition(condition: Any, value: Any) -> bool:
    if value is _MISSING:
        return isinstance(condition, StringMatch) and condition.present is False
    if isinstance(condition, StringMatch):
        if condition.present is not None:
            return condition.present
        return isinstance(value, str) and condition.matches(value)
    # JSON true is not 1: compare types as JSON does.
    return (type(value) is type(condition) and bool(value == condition)) or _numeric_equal(value, condition)


def _numeric_equal(value: Any, condition: Any) -> bool:
    numeric = (int, float)
    return (
        isinstance(value, numeric)
        and isinstance(condition, numeric)
        and not isinstance(value, bool)
        and not isinstance(condition, bool)
        and value == condition
    )


def _field(body: Any, path: str) -> Any:
    value = body
    for part in path.removeprefix("$.").split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
    return value
