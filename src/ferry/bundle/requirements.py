"""A bundle's pip requirements (``options.requirements``, from ``ferry build --requirements``): a file inside the
bundle, listed and hashed like every artifact, of package specifiers only.

``ferry containerize`` installs them into the image, so a line is a package's name, extras, version and markers:
a pip option (``--index-url``, ``--extra-index-url``, ``-e git+...``, ``-r``), a URL or a local path would change
where packages come from for the whole image, or read a file of the host. Such a line is refused, naming it,
unless the operator passes ``--allow-requirement-options``; ``ferry verify`` reports the bundle as not ok.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from types import ModuleType

from ferry.bundle.artifacts import artifact_file
from ferry.bundle.manifest import Manifest, bundle_label
from ferry.errors import ManifestError

ALLOW_FLAG = "--allow-requirement-options"
_COMMENT = re.compile(r"(^|\s+)#.*$")  # as pip reads a requirements file: '#' at the start or after a space


def requirements_file(bundle_dir: Path, manifest: Manifest) -> Path | None:
    """The file ``options.requirements`` names: listed in the manifest and inside the bundle (no ``..``, no
    absolute path, no link that leads out), or an ``IntegrityError`` naming it."""
    name = manifest.options.get("requirements")
    if not name:
        return None
    return artifact_file(bundle_dir, manifest.artifacts, str(name), "options.requirements")


def bundle_requirements(bundle_dir: Path, manifest: Manifest, allow_options: bool = False) -> tuple[str, ...]:
    """The requirement lines of the bundle's requirements file, comments and blank lines left out."""
    path = requirements_file(bundle_dir, manifest)
    if path is None:
        return ()
    lines = []
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = _COMMENT.sub("", text).strip()
        if not line:
            continue
        problem = requirement_problem(line)
        if problem and not allow_options:
            raise ManifestError(
                f"{bundle_label(bundle_dir)}: {path.name} line {number}: '{line[:200]}' {problem}; a bundle's "
                f"requirements are package specifiers only (name, extras, version, markers), unless the operator "
                f"passes {ALLOW_FLAG}"
            )
        lines.append(line)
    return tuple(lines)


def requirement_problem(line: str) -> str | None:
    """Why ``line`` is no plain package specifier (PEP 508 without a URL), or None."""
    if line.startswith("-"):
        return "is a pip option"
    requirements = _packaging()
    try:
        requirement = requirements.Requirement(line)
    except requirements.InvalidRequirement:
        return "is not a package specifier (a URL, a path or a pip option)"
    if requirement.url:
        return "installs from a URL"
    return None


def _packaging() -> ModuleType:
    """``packaging.requirements``, as pip parses requirements (a dependency of Ferry's), imported when needed."""
    return importlib.import_module("packaging.requirements")
