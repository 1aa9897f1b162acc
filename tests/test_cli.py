"""The command line: help, version, build and examples, run as real processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
from sklearn.linear_model import LinearRegression

import ferry


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ferry", *args], capture_output=True, text=True, timeout=120)


def test_help_lists_every_command() -> None:
    out = run("--help").stdout
    for command in ("build", "serve", "demo", "examples"):
        assert command in out


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"ferry {ferry.__version__}"


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


def test_examples_build_is_deterministic(tmp_path: Path) -> None:
    from ferry.bundle import read_manifest

    for repo in ("a", "b"):
        result = run("examples", "build", str(tmp_path / repo))
        assert result.returncode == 0, result.stderr
    for name in ("iris", "diabetes", "score", "reviews"):
        first, second = (read_manifest(tmp_path / repo / name / "1") for repo in ("a", "b"))
        assert first.artifacts == second.artifacts, name


def test_settings_round_trip_through_the_environment() -> None:
    from pathlib import Path as P

    from ferry.settings import Settings

    settings = Settings(repo=P("/m"), port=9, request_timeout=1.5, trust_pickle=True, max_queue=3)
    assert Settings.from_env(settings.to_env()) == settings


def test_the_readme_documents_every_serve_setting() -> None:
    """The README's settings table has a row per setting: its option, variable and help, as `ferry serve --help`."""
    import dataclasses

    from ferry.settings import Settings

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in readme.splitlines() if line.startswith("| `--")}
    for field in dataclasses.fields(Settings):
        if field.name == "repo":  # the positional argument
            continue
        option = f"`--{field.name.replace('_', '-')}`"
        assert option in rows, f"README has no row for {option}"
        assert f"`FERRY_{field.name.upper()}`" in rows[option] and field.metadata["help"] in rows[option]
