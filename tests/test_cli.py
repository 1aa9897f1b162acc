"""The command line: help, version, build and examples, run as real processes."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LinearRegression

import ferry


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "ferry", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=cwd)


def test_help_lists_every_command() -> None:
    out = run("--help").stdout
    commands = ("build", "serve", "verify", "demo", "examples", "loadtest", "check", "plan", "monitor", "gateway")
    deploy = ("containerize", "compose", "k8s", "fetch", "index", "deploy", "undeploy", "status")
    for command in commands + deploy:
        assert f" {command} " in out, command
    assert "Write a Docker build context for REPO" in out  # a lazily imported command keeps its help


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"ferry {ferry.__version__}"


HEAVY_FOR_VERSION = ("urllib.request", "yaml", "ferry.deploy.fetch", "ferry.deploy.compose", "ferry.deploy.dockerfile")


def test_version_does_not_import_the_deploy_renderers() -> None:
    """Only a deploy command pays for urllib (fetch), PyYAML (compose, k8s) and the Dockerfile renderer."""
    probe = f"""
import json, sys
sys.argv = ["ferry", "--version"]
from ferry.cli.entry import main
try:
    main()
except SystemExit as exc:
    assert exc.code in (0, None), exc.code
print(json.dumps([name for name in {HEAVY_FOR_VERSION!r} if name in sys.modules]))
"""
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    version, loaded = result.stdout.strip().splitlines()
    assert version == f"ferry {ferry.__version__}"
    assert json.loads(loaded) == []


def test_build_from_cli_refuses_untrusted_pickle_and_accepts_trusted(tmp_path: Path) -> None:
    model_file = tmp_path / "m.joblib"
    joblib.dump(LinearRegression().fit(np.array([[0.0], [1.0]]), [0.0, 2.0]), model_file)
    refused = run("build", str(model_file), "--name", "lin", "--repo", str(tmp_path / "repo"))
    assert refused.returncode == 1
    assert "unpickling runs arbitrary code" in refused.stderr
    assert "Traceback" not in refused.stderr
    ok = run(
        "build", str(model_file), "--name", "lin", "--repo", str(tmp_path / "repo"), "--features", "x", "--trusted"
    )
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "repo" / "lin" / "1" / "ferry.yaml").is_file()


class _TouchesOnUnpickling:
    """A pickle whose loading creates ``marker``: proof that the build unpickled it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


BAD_BUILD_OPTIONS = {
    "version": (["--version", "../x"], "m:../x: version '../x' is not a plain folder name - at `$.version`"),
    "name": (["--name", "a/b"], "a/b:1: name 'a/b' is not a plain folder name - at `$.name`"),
    "route": (["--route", "BAD"], "--route 'BAD': expected 'POST /path' (or GET), or a YAML mapping"),
    "expect": (["--expect", "1"], "m: --expect needs --sample (the input whose answer is expected)"),
    "features": (["--features", "a,a"], "m:1: duplicate feature names - at `$.input.features`"),
    "requirements": (["--requirements", "nope.txt"], "--requirements nope.txt: no such file"),
    "include missing": (["--include", "nope"], "--include nope: no such file or folder"),
    "include for a pickle": (
        ["--include", "__file__"],
        "m: --include ships files with a Python class; a sklearn model needs none",
    ),
}


@pytest.mark.parametrize("case", BAD_BUILD_OPTIONS, ids=list(BAD_BUILD_OPTIONS))
def test_build_refuses_a_bad_option_before_unpickling(tmp_path: Path, case: str) -> None:
    """A usage mistake fails at once, with its message and exit code, and never after running the pickle's code."""
    options, message = BAD_BUILD_OPTIONS[case]
    options = [__file__ if o == "__file__" else o for o in options]
    marker = tmp_path / "unpickled"
    (tmp_path / "model.pkl").write_bytes(pickle.dumps(_TouchesOnUnpickling(marker)))
    result = run("build", "model.pkl", "--name", "m", "--repo", "repo", "--trusted", *options, cwd=tmp_path)
    assert (result.returncode, result.stderr.strip()) == (1, f"error: {message}")
    assert not marker.exists(), "the pickle was loaded before the option was checked"
    assert not (tmp_path / "repo" / "m").exists()


def test_build_unpickles_a_trusted_pickle_when_the_options_are_good(tmp_path: Path) -> None:
    """The control for the test above: with good options, the same pickle is loaded (and then refused)."""
    marker = tmp_path / "unpickled"
    (tmp_path / "model.pkl").write_bytes(pickle.dumps(_TouchesOnUnpickling(marker)))
    result = run("build", "model.pkl", "--name", "m", "--repo", "repo", "--trusted", cwd=tmp_path)
    assert result.returncode == 1 and "not a model or transformer" in result.stderr
    assert marker.exists()


def test_build_refuses_a_bad_option_before_importing_a_class(tmp_path: Path) -> None:
    """``module.py:Class`` is imported (its module's code run) only once the options are checked."""
    marker = tmp_path / "imported"
    (tmp_path / "model.py").write_text(
        f"from pathlib import Path\n\nPath({str(marker)!r}).touch()\n\n\n"
        "class Model:\n    def predict(self, batch):\n        return batch\n"
    )
    refused = run("build", "model.py:Model", "--name", "m", "--repo", "repo", "--version", "../x", cwd=tmp_path)
    assert (refused.returncode, refused.stderr.strip()) == (
        1,
        "error: m:../x: version '../x' is not a plain folder name - at `$.version`",
    )
    assert not marker.exists()
    built = run("build", "model.py:Model", "--name", "m", "--repo", "repo", cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    assert marker.exists() and (tmp_path / "repo" / "m" / "1" / "model.py").is_file()


@pytest.mark.parametrize(
    ("fit", "options", "message"),
    [
        ("regressor", ["--features", "a,b"], "m:1: 2 feature names for a model fitted on 1 - at `$.input.features`"),
        ("classifier", ["--labels", "x,y"], "m:1: 2 labels for a classifier of 3 classes - at `$.labels`"),
    ],
)
def test_build_refuses_features_or_labels_the_model_does_not_have(
    tmp_path: Path, fit: str, options: list[str], message: str
) -> None:
    """Served, such a bundle would fail its warm-up (features) or answer with wrong or missing labels."""
    import joblib
    import numpy as np
    from sklearn.linear_model import LinearRegression, LogisticRegression

    x = np.arange(30.0).reshape(-1, 1)
    model = (
        LinearRegression().fit(x, 2 * x.ravel())
        if fit == "regressor"
        else LogisticRegression().fit(x, np.arange(30) % 3)
    )
    joblib.dump(model, tmp_path / "model.joblib")
    refused = run("build", "model.joblib", "--name", "m", "--repo", "repo", "--trusted", *options, cwd=tmp_path)
    assert (refused.returncode, refused.stderr.strip()) == (1, f"error: {message}")
    assert not (tmp_path / "repo" / "m").exists()
    fitting = ["--features", "a"] if fit == "regressor" else ["--labels", "x,y,z"]
    built = run("build", "model.joblib", "--name", "m", "--repo", "repo", "--trusted", *fitting, cwd=tmp_path)
    assert built.returncode == 0, built.stderr


def test_examples_build_is_deterministic(example_repo: Path, tmp_path: Path) -> None:
    """``ferry examples build``, in a process of its own, writes what the session's build (tests/conftest.py) wrote."""
    from ferry.bundle import read_manifest

    result = run("examples", "build", str(tmp_path))
    assert result.returncode == 0, result.stderr
    for name in ("iris", "diabetes", "score", "reviews"):
        first, second = (read_manifest(repo / name / "1") for repo in (example_repo, tmp_path))
        assert first.artifacts == second.artifacts, name


def test_settings_round_trip_through_the_environment() -> None:
    from pathlib import Path as P

    from ferry.settings import Settings

    settings = Settings(repo=P("/m"), port=9, request_timeout=1.5, trust_pickle=True, max_queue=3)
    assert Settings.from_env(settings.to_env()) == settings


def test_the_readme_documents_every_serve_setting() -> None:
    """The manual's settings table has a row per setting: its option, variable and help, as `ferry serve --help`."""
    import dataclasses

    from tests.manual import manual_text

    from ferry.settings import Settings

    readme = manual_text()
    rows = {line.split("|")[1].strip(): line for line in readme.splitlines() if line.startswith("| `--")}
    for field in dataclasses.fields(Settings):
        if field.name == "repo":  # the positional argument
            continue
        option = f"`--{field.name.replace('_', '-')}`"
        assert option in rows, f"README has no row for {option}"
        assert f"`FERRY_{field.name.upper()}`" in rows[option] and field.metadata["help"] in rows[option]


SERVE_LINES = [
    ["serve", "models"],
    ["serve", "models", "--port", "9001", "--workers", "2", "--admin", "--no-console", "--request-timeout", "2.5"],
    ["serve", "models", "--admin", "--admin-unauthenticated"],
    ["serve", "--trust-pickle", "--original-models", "models", "--auth-tokens", "a,b", "--log-format", "text"],
    ["serve", "models", "--max-memory", "512MiB", "--no-preload"],
]


def test_plain_serve_lines_parse_as_typer_parses_them(monkeypatch: Any, tmp_path: Path) -> None:
    """``ferry serve`` starts without typer (for ready time); the settings must be typer's, option for option."""
    from typer.testing import CliRunner

    (tmp_path / "models" / "m" / "1").mkdir(parents=True)  # a repository: a missing one goes to typer, to explain
    (tmp_path / "models" / "m" / "1" / "ferry.yaml").write_text("name: m\n")
    monkeypatch.chdir(tmp_path)

    from ferry.cli import main
    from ferry.cli.entry import plain_serve_settings

    seen: list[Any] = []
    monkeypatch.setattr(main, "_serve", seen.append)
    monkeypatch.setenv("FERRY_MAX_QUEUE", "7")  # variables count on both paths
    for argv in SERVE_LINES:
        result = CliRunner().invoke(main.app, argv)
        assert result.exit_code == 0, result.output
        assert plain_serve_settings(argv) == seen[-1]
    assert seen[-1].max_queue == 7


def test_serve_lines_typer_must_explain_are_left_to_it() -> None:
    from ferry.cli.entry import plain_serve_settings

    for argv in (
        ["serve", "--help"],
        ["serve"],
        ["serve", "m", "--port", "x"],
        ["serve", "m", "--bogus"],
        ["serve", "m", "--log-format", "xml"],
        ["serve", "m", "--routes", "r.yaml"],
        ["build", "m"],
    ):
        assert plain_serve_settings(argv) is None, argv
    bad = run("serve", "models", "--port", "x")
    assert bad.returncode == 2 and "--port" in bad.stderr  # typer's own message, not a traceback


def test_every_command_names_its_docs_page() -> None:
    """``ferry --help`` and each command's help end with its page of the manual, a file under docs/."""
    import typer.core
    import typer.main

    from ferry.cli.main import app

    root = Path(__file__).parent.parent
    group = typer.main.get_command(app)
    assert "Docs: docs/index.md" in (group.epilog or "") and (root / "docs" / "index.md").is_file()
    assert isinstance(group, typer.core.TyperGroup)
    for name, command in group.commands.items():
        page = (command.epilog or "").removeprefix("Docs: ")
        assert page.startswith("docs/") and (root / page).is_file(), f"ferry {name}: {command.epilog}"
    assert "Docs: docs/serving.md" in run("serve", "--help").stdout


def test_every_help_text_reads_the_same_once_rich_renders_it() -> None:
    """typer renders help through rich's markup: an emoji code (``START:END:`` became START🔚) or a bracketed
    word (``'ferry[plots]'``) would be eaten. Every command's and option's help must render as written."""
    import typer
    from rich.text import Text

    from ferry.cli.main import app

    def walk(command: Any, path: str) -> Iterator[tuple[str, str]]:
        yield path, command.help or ""
        for param in command.params:
            yield f"{path} {param.name}", getattr(param, "help", None) or ""
        if hasattr(command, "list_commands"):  # a group (typer's own copy of click's)
            context = typer.Context(command)
            for name in command.list_commands(context):
                sub = command.get_command(context, name)
                assert sub is not None
                yield from walk(sub, f"{path} {name}")

    texts = list(walk(typer.main.get_command(app), "ferry"))
    assert len(texts) > 200
    changed = {where: text for where, text in texts if Text.from_markup(text).plain != text}
    assert not changed, changed
