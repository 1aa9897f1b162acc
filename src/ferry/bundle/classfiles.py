"""Where a Python class opens its files: a relative path is read from the server's working directory.

A class that calls ``open("vectorizer.pkl")`` works where it was written, run from its own folder, and fails
when served from anywhere else (a container's working directory is never the bundle). Its files are next to
its ``__file__``: ``Path(__file__).parent / "vectorizer.pkl"``. The builder scans the bundle's Python files for
a string literal given as the path of a call that opens a file, and warns for each one.
"""

from __future__ import annotations

import ast
import warnings
from dataclasses import dataclass
from pathlib import Path

from ferry.errors import FerryWarning

# Calls whose first argument (or one of these keywords) is a path they open.
_OPENERS = {
    "open",
    "Path",
    "load",
    "loadtxt",
    "genfromtxt",
    "read_csv",
    "read_parquet",
    "read_json",
    "read_pickle",
    "read_table",
    "read_feather",
    "Booster",
    "load_model",
    "InferenceSession",
}
_PATH_KEYWORDS = {"file", "fname", "filename", "path", "model_file", "filepath_or_buffer", "path_or_bytes"}


class RelativePathWarning(FerryWarning):
    """A bundle's Python file opens a path relative to the working directory."""


@dataclass(frozen=True)
class RelativeOpen:
    file: str  # inside the bundle
    line: int
    path: str  # the literal, as written


def relative_opens(source: str, file: str) -> list[RelativeOpen]:
    """Each call in ``source`` that opens a relative path given as a string literal."""
    try:
        tree = ast.parse(source, filename=file)
    except SyntaxError:
        return []  # importing the class reports it
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or _name(node.func) not in _OPENERS:
            continue
        given = [node.args[0]] if node.args else []
        given += [k.value for k in node.keywords if k.arg in _PATH_KEYWORDS]
        for arg in given:
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and _relative_file(arg.value):
                found.append(RelativeOpen(file, node.lineno, arg.value))
    return sorted(found, key=lambda f: f.line)


def _name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    return func.attr if isinstance(func, ast.Attribute) else None


def _relative_file(text: str) -> bool:
    if text in ("", ".", "..") or "\n" in text or "://" in text or len(text) > 255:
        return False
    return not Path(text).is_absolute() and not text.startswith("~")


def relative_path_problems(bundle: Path) -> list[str]:
    """One line per relative path opened by a Python file of ``bundle``, saying whether the bundle holds it."""
    problems = []
    for py in sorted(bundle.rglob("*.py")):
        inside = py.relative_to(bundle).as_posix()
        for found in relative_opens(py.read_text(encoding="utf-8", errors="replace"), inside):
            shipped = (py.parent / found.path).exists() or (bundle / found.path).exists()
            fix = (
                f"the bundle holds it; open it as Path(__file__).parent / {found.path!r}"
                if shipped
                else f"the bundle does not hold it: ship it with --include {found.path} and open it as "
                f"Path(__file__).parent / {found.path!r}"
            )
            problems.append(
                f"{found.file}:{found.line} opens {found.path!r} relative to the working directory, which is not "
                f"the bundle's folder when served (a container's never is); {fix}"
            )
    return problems


def warn_relative_paths(bundle: Path) -> None:
    """At build: warn (``RelativePathWarning``) for each relative path a Python file of ``bundle`` opens."""
    for problem in relative_path_problems(bundle):
        warnings.warn(problem, RelativePathWarning, stacklevel=4)
