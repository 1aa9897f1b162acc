"""SHA-256 of bundle artifacts, computed at build and checked at every load."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ferry.bundle.artifacts import contained
from ferry.bundle.manifest import bundle_label
from ferry.errors import IntegrityError


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_artifacts(bundle_dir: Path, artifacts: dict[str, str]) -> None:
    """Refuse the bundle when any listed artifact is outside it, missing or changed; the error names the file.

    Containment is checked before any byte is read, so no file outside the bundle is ever hashed.
    """
    for name, expected in artifacts.items():
        actual = sha256_file(contained(bundle_dir, name))
        if actual != expected:
            raise IntegrityError(
                f"{bundle_label(bundle_dir)}: artifact '{name}' has changed since the bundle was built "
                f"(sha256 {actual[:12]}..., manifest says {str(expected)[:12]}...)"
            )
