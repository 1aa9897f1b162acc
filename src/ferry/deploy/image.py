"""Build and push the image with docker, or podman where docker is absent; argv lists, output streamed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from ferry.errors import ToolError

ENGINES = ("docker", "podman")


def find_engine() -> str:
    for engine in ENGINES:
        if shutil.which(engine):
            return engine
    raise ToolError("neither docker nor podman is on PATH; install one, or build the written context elsewhere")


def build_argv(engine: str, context: Path, image: str, base_image: str | None = None) -> list[str]:
    argv = [engine, "build", "--tag", image]
    if base_image:
        argv += ["--build-arg", f"BASE_IMAGE={base_image}"]
    return [*argv, str(context)]


def push_argv(engine: str, image: str) -> list[str]:
    return [engine, "push", image]


def run_streamed(argv: list[str]) -> None:
    """Run with the tool's own progress on the terminal; a non-zero exit is a ToolError naming the command."""
    try:
        result = subprocess.run(argv, check=False)
    except FileNotFoundError:
        raise ToolError(f"{argv[0]}: not found on PATH") from None
    if result.returncode != 0:
        raise ToolError(f"`{' '.join(argv)}` exited with status {result.returncode}")
