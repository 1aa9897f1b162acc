"""A model repository: ``REPO/<name>/<version>/ferry.yaml``, several models and versions each."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ferry.bundle.manifest import MANIFEST_FILE


@dataclass(frozen=True)
class BundleRef:
    name: str
    version: str
    path: Path


def version_key(version: str) -> tuple[tuple[int, str], ...]:
    """Natural order: ``2 < 10`` and ``1.2 < 1.10``; text parts sort after numbers."""
    return tuple((int(p), "") if p.isdigit() else (1 << 62, p) for p in re.split(r"[.\-_+]", version))


def scan_repository(repo: Path) -> dict[str, list[BundleRef]]:
    """Every bundle in ``repo`` by model name, versions oldest first."""
    models: dict[str, list[BundleRef]] = {}
    if not repo.is_dir():
        return models
    for manifest in sorted(repo.glob(f"*/*/{MANIFEST_FILE}")):
        version_dir = manifest.parent
        ref = BundleRef(name=version_dir.parent.name, version=version_dir.name, path=version_dir)
        models.setdefault(ref.name, []).append(ref)
    for refs in models.values():
        refs.sort(key=lambda r: version_key(r.version))
    return models


def next_version(repo: Path, name: str) -> str:
    refs = scan_repository(repo).get(name, [])
    numeric = [int(r.version) for r in refs if r.version.isdigit()]
    return str(max(numeric, default=0) + 1)
