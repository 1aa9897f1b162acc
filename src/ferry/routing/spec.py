"""The routes file, ``routes.yaml``: ordered rules, weighted splits, shadows and a default, as typed structs.

One file drives three places (``ferry serve --routes``, ``ferry gateway`` and the Istio objects of
``ferry k8s --routes``), so it is checked once, here, and every error names the rule and the field.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import msgspec

from ferry.errors import RoutesError as RoutesError  # re-exported: its old home


class StringMatch(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Exactly one of: ``exact``, ``prefix``, ``regex`` (a full match, as in Istio) or ``present: true``."""

    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None
    present: bool | None = None

    def matches(self, value: str | None) -> bool:
        if value is None:
            return self.present is False
        if self.exact is not None:
            return value == self.exact
        if self.prefix is not None:
            return value.startswith(self.prefix)
        if self.regex is not None:
            return re.fullmatch(self.regex, value) is not None
        return bool(self.present)


Scalar = str | int | float | bool
Condition = str | StringMatch


class Match(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Conditions that must all hold. A bare string means ``exact``.

    ``body`` keys are dotted paths into the JSON body (``customer.tier``, ``items.0.kind``); a
    scalar value must equal the field, a ``StringMatch`` tests a string field.
    """

    headers: dict[str, Condition] = msgspec.field(default_factory=dict)
    query: dict[str, Condition] = msgspec.field(default_factory=dict)
    body: dict[str, Scalar | StringMatch] = msgspec.field(default_factory=dict)
    path: Condition | None = None


class Target(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A model of this server (``model`` and optional ``version``) or an upstream service (``url``).

    ``weight`` only counts inside a ``split``.
    """

    model: str | None = None
    version: str | None = None
    url: str | None = None
    weight: int = 100

    @property
    def key(self) -> str:
        """A short, bounded label: ``model``, ``model@version`` or the URL."""
        if self.model is None:
            return self.url or ""
        return self.model if self.version is None else f"{self.model}@{self.version}"


Compare = Literal["auto", "label", "number"]


class Route(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Where a request goes: one target (``to``) or a weighted ``split``, sticky per ``sticky`` header.

    ``shadow`` also gets a copy of the request; its answer is only compared with the primary's.
    """

    to: Target | None = None
    split: list[Target] = msgspec.field(default_factory=list)
    sticky: str | None = None
    shadow: Target | None = None
    compare: Compare = "auto"
    shadow_timeout_s: float = 10.0


class Rule(Route, forbid_unknown_fields=True, omit_defaults=True):
    """A named route with its conditions; rules are tried in file order, the first match wins."""

    name: str = ""
    match: Match = msgspec.field(default_factory=Match)


class Upstream(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Where a model runs as a service (for the gateway and Istio), and how to talk to it."""

    url: str
    timeout_s: float = 30.0
    connect_timeout_s: float = 2.0
    retries: int = 2
    breaker_failures: int = 5
    breaker_reset_s: float = 10.0
    health_path: str = "/health"


class RoutesFile(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """``name`` is the router's own model name (``/models/{name}/predict``) and, in Istio, its host."""

    name: str = "router"
    services: dict[str, Upstream] = msgspec.field(default_factory=dict)
    rules: list[Rule] = msgspec.field(default_factory=list)
    default: Route | None = None

    def routes(self) -> list[tuple[str, Route]]:
        """Every (name, route) in order, the default last as ``default``."""
        named: list[tuple[str, Route]] = [(r.name, r) for r in self.rules]
        return named + ([("default", self.default)] if self.default is not None else [])

    def targets(self) -> list[Target]:
        out = []
        for _, route in self.routes():
            out += [t for t in [route.to, *route.split, route.shadow] if t is not None]
        return out

    def upstream_for(self, target: Target) -> Upstream:
        """The service behind a target: ``services[model@version]``, ``services[model]``, or the URL itself."""
        if target.model is not None:
            for key in (target.key, target.model):
                if key in self.services:
                    return self.services[key]
            raise RoutesError(f"no service declared for model '{target.key}'; add it under `services`")
        for upstream in self.services.values():
            if upstream.url.rstrip("/") == (target.url or "").rstrip("/"):
                return upstream
        return Upstream(url=target.url or "")


def load_routes(path: str | Path) -> RoutesFile:
    import yaml  # here, not at the top: a server without --routes starts without PyYAML (~8% of its start-up)

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RoutesError(f"{path}: no such routes file") from None
    except yaml.YAMLError as exc:
        raise RoutesError(f"{path}: not valid YAML: {exc}") from None
    return parse_routes(raw, source=str(path))


def parse_routes(raw: Any, source: str = "routes.yaml") -> RoutesFile:
    """Check the whole file; the first problem is raised, naming the rule and the field."""
    if not isinstance(raw, dict):
        raise RoutesError(f"{source}: expected a mapping with `rules` and `default`")
    rules = raw.get("rules") or []
    if not isinstance(rules, list):
        raise RoutesError(f"{source}: `rules` must be a list - at `rules`")
    parsed_rules = []
    for index, rule in enumerate(rules):
        label = _rule_label(rule, index)
        try:
            parsed_rules.append(msgspec.convert(rule, Rule))
        except msgspec.ValidationError as exc:
            raise RoutesError(f"{source}: {label}: {_field_error(exc)}") from None
    try:
        routes = msgspec.convert({**raw, "rules": []}, RoutesFile)
    except msgspec.ValidationError as exc:
        raise RoutesError(f"{source}: {_field_error(exc)}") from None
    routes.rules = parsed_rules
    _check(routes, source)
    return routes


def _rule_label(rule: Any, index: int) -> str:
    name = rule.get("name") if isinstance(rule, dict) else None
    return f"rule '{name}' (rules[{index}])" if isinstance(name, str) and name else f"rules[{index}]"


def _field_error(exc: msgspec.ValidationError) -> str:
    text = str(exc)
    return text.replace("`$.", "`").replace("`$`", "`(top level)`")


def _check(routes: RoutesFile, source: str) -> None:
    seen: set[str] = set()
    for index, rule in enumerate(routes.rules):
        label = f"rule '{rule.name}' (rules[{index}])" if rule.name else f"rules[{index}]"
        if not rule.name:
            raise RoutesError(f"{source}: {label}: every rule needs a `name` - at `name`")
        if rule.name in seen or rule.name == "default":
            raise RoutesError(f"{source}: {label}: the name '{rule.name}' is already taken - at `name`")
        seen.add(rule.name)
        _check_match(rule.match, f"{source}: {label}")
        _check_route(rule, f"{source}: {label}")
    if routes.default is not None:
        _check_route(routes.default, f"{source}: default")
    for key, upstream in routes.services.items():
        if not re.match(r"^https?://[^/]+", upstream.url):
            raise RoutesError(f"{source}: service '{key}': url must start with http:// or https:// - at `url`")
        if upstream.timeout_s <= 0 or upstream.retries < 0 or upstream.breaker_failures < 1:
            raise RoutesError(f"{source}: service '{key}': timeouts, retries and breaker_failures must be positive")


def _check_match(match: Match, where: str) -> None:
    conditions: list[tuple[str, Any]] = [(f"match.headers.{k}", v) for k, v in match.headers.items()]
    conditions += [(f"match.query.{k}", v) for k, v in match.query.items()]
    conditions += [(f"match.body.{k}", v) for k, v in match.body.items()]
    if match.path is not None:
        conditions.append(("match.path", match.path))
    for field, condition in conditions:
        if not isinstance(condition, StringMatch):
            continue
        set_ops = [op for op in ("exact", "prefix", "regex", "present") if getattr(condition, op) is not None]
        if len(set_ops) != 1:
            raise RoutesError(f"{where}: give exactly one of exact, prefix, regex or present - at `{field}`")
        if condition.regex is not None:
            try:
                re.compile(condition.regex)
            except re.error as exc:
                raise RoutesError(f"{where}: invalid regex: {exc} - at `{field}.regex`") from None


def _check_route(route: Route, where: str) -> None:
    if (route.to is None) == (not route.split):
        raise RoutesError(f"{where}: give exactly one of `to` or `split` - at `to`")
    for field, target in _targets(route):
        if (target.model is None) == (target.url is None):
            raise RoutesError(f"{where}: a target needs exactly one of `model` or `url` - at `{field}`")
        if target.url is not None and target.version is not None:
            raise RoutesError(f"{where}: `version` goes with `model`, not `url` - at `{field}.version`")
        if target.url is not None and not re.match(r"^https?://[^/]+", target.url):
            raise RoutesError(f"{where}: url must start with http:// or https:// - at `{field}.url`")
        if target.weight < 0:
            raise RoutesError(f"{where}: weight must be >= 0 - at `{field}.weight`")
    if route.split and sum(t.weight for t in route.split) <= 0:
        raise RoutesError(f"{where}: the weights of a split must add up to more than 0 - at `split`")
    if route.sticky is not None and not route.split:
        raise RoutesError(f"{where}: `sticky` needs a weighted `split` - at `sticky`")
    if route.shadow_timeout_s <= 0:
        raise RoutesError(f"{where}: shadow_timeout_s must be positive - at `shadow_timeout_s`")


def _targets(route: Route) -> list[tuple[str, Target]]:
    out = [("to", route.to)] if route.to is not None else []
    out += [(f"split[{i}]", t) for i, t in enumerate(route.split)]
    if route.shadow is not None:
        out.append(("shadow", route.shadow))
    return out
