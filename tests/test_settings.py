"""Settings are declared once: every command's options, defaults and FERRY_* variables come from ``ferry.settings``.

A default spelled out a second time (in a command, a spec or an engine) drifts the day one copy changes;
an environment variable spelled by hand stops working the day its setting is renamed. These tests fail on both.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer

from ferry.cli.main import app
from ferry.deploy import compose, dockerfile, k8s, options
from ferry.deploy.spec import CLUSTER_REPLICAS, DeploySpec, Resources, Scaling
from ferry.settings import BuildSettings, GatewaySettings, LoadTestSettings, Settings, SettingsGroup

SRC = Path(__file__).resolve().parent.parent / "src" / "ferry"
GROUPS: list[type[SettingsGroup]] = [Settings, GatewaySettings, LoadTestSettings]


def params(name: str) -> dict[str, Any]:
    """The command's click parameters by name (typer vendors its own click: no isinstance on click's classes)."""
    command = typer.main.get_command(app).commands[name]  # type: ignore[attr-defined]
    return {p.name: p for p in command.params if p.name and p.name != "help"}


@pytest.mark.parametrize(
    ("name", "group", "only"),
    [
        ("serve", Settings, None),
        ("demo", Settings, ("host", "port", "grpc_port", "probe_port")),
        ("verify", Settings, ("repo", "trust_pickle", "trust_code", "original_models")),
        ("gateway", GatewaySettings, None),
        ("loadtest", LoadTestSettings, None),
    ],
)
def test_command_options_are_the_settings_fields(name: str, group: type[Any], only: tuple[str, ...] | None) -> None:
    """Each setting is the command's option with the field's default, help and variable; none is left out."""
    options = params(name)
    fields = [f for f in dataclasses.fields(group) if only is None or f.name in only]
    for field in fields:
        option = options[field.name]
        assert option.envvar == group.env_name(field.name), field.name
        assert option.default == (None if option.required else field.default), field.name
        assert getattr(option, "help", None) in (None, field.metadata["help"])
        declared = field.metadata["option"] or "--" + field.name.replace("_", "-")
        assert declared in option.opts or option.param_type_name == "argument", field.name


def test_build_options_are_the_build_settings_fields_and_read_no_environment() -> None:
    """``ferry build``'s options are ``BuildSettings``' fields, in order; a build reads no FERRY_* variable."""
    options = params("build")
    fields = dataclasses.fields(BuildSettings)
    assert [name for name in options if name != "model"] == [f.name for f in fields]
    for field in fields:
        option = options[field.name]
        assert option.envvar is None, field.name
        assert option.default == field.default and option.help == field.metadata["help"], field.name
        assert "--" + field.name.replace("_", "-") in option.opts, field.name


@pytest.mark.parametrize(
    ("name", "group", "own"),
    [
        ("containerize", options.ContainerizeOptions, ("repo", "tag")),
        ("compose", options.ComposeOptions, ("repo",)),
        ("k8s", options.K8sOptions, ("repo",)),
        ("deploy", options.ApplyOptions, ("repo",)),
        ("undeploy", options.UndeployOptions, ()),
        ("status", options.StatusOptions, ()),
    ],
)
def test_deploy_options_are_their_groups_fields(name: str, group: type[Any], own: tuple[str, ...]) -> None:
    """Each deployment command's options are its group's fields (``ferry.deploy.options``), after its own
    parameters; none reads a variable."""
    found = params(name)
    fields = dataclasses.fields(group)
    assert list(found) == [*own, *(f.name for f in fields)]
    for field in fields:
        option = found[field.name]
        assert option.envvar is None and option.help == field.metadata["help"], field.name
        assert option.default == field.default, field.name
        declared = field.metadata["option"] or "--" + field.name.replace("_", "-")
        assert set([declared] if isinstance(declared, str) else declared) <= set(option.opts + option.secondary_opts)


def test_option_names_of_settings_keep_their_spelling() -> None:
    """Flags and variables that users and scripts already use."""
    assert "--health-interval" in params("gateway")["health_interval"].opts
    assert "--json" in params("loadtest")["json_path"].opts
    assert "--grpc-port" in params("serve")["grpc_port"].opts
    assert Settings.env_name("grpc_port") == "FERRY_GRPC_PORT"
    assert GatewaySettings.env_name("port") == "FERRY_GATEWAY_PORT"
    with pytest.raises(KeyError, match="no setting 'bogus'"):
        Settings.env_name("bogus")


def test_deploy_command_defaults_are_the_deploy_spec_defaults() -> None:
    spec_defaults = {f.name: f.default for f in dataclasses.fields(DeploySpec) if f.default is not dataclasses.MISSING}
    spec_defaults |= {"concurrency_target": Scaling.concurrency, "sla_p99_ms": Scaling.p99_seconds * 1000}
    spec_defaults |= {"cpu": f"{Resources.cpu_request},{Resources.cpu_limit}"}
    spec_defaults |= {"memory": f"{Resources.memory_request},{Resources.memory_limit}"}
    checked = 0
    for name in ("compose", "k8s", "deploy", "undeploy", "status"):
        for option, param in params(name).items():
            if option not in spec_defaults:
                continue
            expected = spec_defaults[option]
            if option == "replicas" and name in ("k8s", "deploy"):
                expected = CLUSTER_REPLICAS
            assert param.default == expected, f"ferry {name} --{option}"
            checked += 1
    assert checked >= 20


def test_build_and_fetch_name_the_repository_as_serve_does() -> None:
    assert params("build")["repo"].default == Settings.repo
    assert params("fetch")["dest"].envvar == Settings.env_name("repo")


def test_check_shares_the_load_test_protocol_and_timeout() -> None:
    check = params("check")
    assert check["protocol"].default == LoadTestSettings.protocol
    assert check["timeout"].default == LoadTestSettings.timeout


def literal_defaults(path: Path) -> list[tuple[str, str, Any]]:
    """(function, parameter, value) for every parameter default written as a literal in a module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        args = node.args.posonlyargs + node.args.args
        pairs = list(zip(args[len(args) - len(node.args.defaults) :], node.args.defaults, strict=True))
        pairs += [(a, d) for a, d in zip(node.args.kwonlyargs, node.args.kw_defaults, strict=True) if d is not None]
        for arg, default in pairs:
            if isinstance(default, ast.Constant):
                found.append((node.name, arg.arg, default.value))
    return found


def test_no_command_declares_a_setting_default_a_second_time() -> None:
    """A literal default for a parameter named like a setting, with that setting's value, is a second declaration.

    ("Nothing" defaults, None, "" and False, say only that an option is absent, and are not counted.)
    """
    settings_defaults: dict[str, set[Any]] = {}
    for group in [*GROUPS, DeploySpec, Scaling, Resources]:
        for field in dataclasses.fields(group):
            if field.default is not dataclasses.MISSING and field.default not in (None, "", False):
                settings_defaults.setdefault(field.name, set()).add(field.default)
    modules = [*sorted((SRC / "cli").glob("*.py")), SRC / "loadtest" / "engine.py", SRC / "loadtest" / "runner.py"]
    modules += [SRC / "loadtest" / "check.py", SRC / "server" / "gateway.py"]
    twice = [
        f"{path.name}: {function}({name}={value!r})"
        for path in modules
        for function, name, value in literal_defaults(path)
        if value in settings_defaults.get(name, set()) and value not in (None, "", False)
    ]
    assert not twice


def test_deploy_environment_is_settings_to_env() -> None:
    """The ConfigMap, compose's environment and the image's ENV name only real settings, and mean what they say."""
    spec = DeploySpec(image="ferry:1", workers=3, drain_timeout=12, log_level="debug", trust_code=True)
    env = spec.server_env()
    names = set(Settings().to_env())
    assert set(env) <= names
    served = Settings.from_env(env)
    assert (served.workers, served.drain_timeout, served.log_level, served.trust_code) == (3, 12, "debug", True)
    assert (served.host, str(served.repo), served.port, served.grpc_port) == ("0.0.0.0", "/models", 8000, 8081)

    objects = k8s.render_manifests(dataclasses.replace(spec, auth_secret="tokens"))
    configmaps = [o for o in objects.values() if o["kind"] == "ConfigMap"]
    assert configmaps and all(set(o["data"]) <= names for o in configmaps)
    containers = [
        c for o in objects.values() if o["kind"] == "Deployment" for c in o["spec"]["template"]["spec"]["containers"]
    ]
    assert {e["name"] for c in containers for e in c.get("env", []) if e["name"].startswith("FERRY_")} <= names

    service = compose.render_compose(dataclasses.replace(spec, model_uri="https://example.com/m.tar.gz"))
    environment = service["services"]["ferry"]["environment"]
    assert set(environment) <= names and environment["FERRY_MODEL_URI"].startswith("https://")

    image = dockerfile.ImageSpec(image="ferry:1", models=(), trust_code=True)
    text = dockerfile.render_dockerfile(image)
    assert set(re.findall(r"\b(FERRY_[A-Z_]+)=", text)) <= names
    assert Settings.from_env(dict(re.findall(r"\b(FERRY_[A-Z_]+)=(\S+)", text))).trust_code


def test_every_group_round_trips_through_its_environment() -> None:
    cases = [
        Settings(repo=Path("/m"), port=9, request_timeout=1.5, trust_pickle=True, max_queue=3),
        GatewaySettings(port=9000, health_interval=0.5, tracing="console"),
        LoadTestSettings(url="http://x", rate=5.0, concurrency=None, json_path=Path("out.json"), find_max=True),
    ]
    for settings in cases:
        assert type(settings).from_env(settings.to_env()) == settings


def test_a_gateway_variable_is_read_and_a_bad_one_is_a_usage_error(tmp_path: Path) -> None:
    """``FERRY_GATEWAY_*`` reaches the option, and a bad value exits 2 (usage) in one line, as a bad flag does."""
    env = {**os.environ, "FERRY_GATEWAY_HEALTH_INTERVAL": "soon"}
    result = subprocess.run(
        [sys.executable, "-m", "ferry", "gateway", str(tmp_path / "routes.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 2, result.stderr
    assert "--health-interval" in result.stderr and "FERRY_GATEWAY_HEALTH_INTERVAL" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
