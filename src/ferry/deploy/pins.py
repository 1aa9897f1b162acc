"""Pinned requirements for the image, read from the environment that built (and tested) the models."""

from __future__ import annotations

import importlib.metadata as metadata
import re
from collections.abc import Iterable

from ferry.errors import SpecError

# Which of Ferry's extras a bundle's runtime needs inside the image.
# A compiled form (``ferry.runtimes.compiled``) needs numpy alone, a core dependency.
RUNTIME_EXTRAS = {
    "sklearn": "sklearn",
    "lightgbm": "lightgbm",
    "onnx": "onnx",
    "xgboost": "xgboost",
    "catboost": "catboost",
    "python": None,
    "compiled": None,
}
# System libraries a runtime's wheels expect but do not ship (Debian bookworm versions, pinned for hadolint).
RUNTIME_APT_PACKAGES = {"lightgbm": ("libgomp1=12.2.0-14+deb12u1",)}

_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?")
_EXTRA_IN_MARKER = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")
# The image is Linux: a requirement only for another OS is never pinned, even when installed here.
_OTHER_OS_MARKER = re.compile(
    r"""(platform_system|sys_platform|os_name)\s*==\s*["'](Windows|win32|nt|Darwin|darwin|cygwin)["']"""
)


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned_requirements(extras: set[str], root: str = "ferry", packages: Iterable[str] = ()) -> list[str]:
    """``name==version`` for every installed distribution ``root[extras]`` needs, ``root`` itself excluded, and
    for each of ``packages`` (installed distributions the models import) and what it needs.

    A requirement whose marker names extras is followed only for requested extras; one with any other marker
    (platform, Python version) is followed when it is installed, since this environment already resolved it.
    """
    pins: dict[str, str] = {}
    for package in packages:
        pins[normalize(package)] = metadata.version(package)
    pending: list[tuple[str, frozenset[str]]] = [(root, frozenset(extras))]
    pending += [(package, frozenset()) for package in packages]
    seen: set[tuple[str, frozenset[str]]] = set()
    while pending:
        dist_name, wanted = pending.pop()
        if (normalize(dist_name), wanted) in seen:
            continue
        seen.add((normalize(dist_name), wanted))
        for line in metadata.requires(dist_name) or []:
            requirement, _, marker = line.partition(";")
            match = _REQUIREMENT.match(requirement)
            if match is None:
                continue
            name, sub_extras = match.group(1), match.group(2) or ""
            marker_extras = set(_EXTRA_IN_MARKER.findall(marker))
            if (marker_extras and not marker_extras & wanted) or _OTHER_OS_MARKER.search(marker):
                continue
            try:
                version = metadata.version(name)
            except metadata.PackageNotFoundError:
                if marker.strip():
                    continue  # a marker this platform does not meet
                raise SpecError(
                    f"{dist_name} needs '{name}', which is not installed here, so it cannot be pinned"
                ) from None
            pins[normalize(name)] = version
            pending.append((name, frozenset(e.strip() for e in sub_extras.split(",") if e.strip())))
    pins.pop(normalize(root), None)
    return [f"{name}=={version}" for name, version in sorted(pins.items())]


def pin_if_installed(requirement: str) -> str:
    """A bare package name pinned to the version installed here (which built the models); anything else as written."""
    match = _REQUIREMENT.match(requirement)
    if match is None or match.end() != len(requirement.rstrip()):
        return requirement
    try:
        return f"{normalize(match.group(1))}=={metadata.version(match.group(1))}"
    except metadata.PackageNotFoundError:
        return requirement


def requirement_name(requirement: str) -> str:
    """The normalized package name of a requirement line (``LightGBM>=4`` -> ``lightgbm``)."""
    match = _REQUIREMENT.match(requirement)
    return normalize(match.group(1)) if match else ""
