"""A model repository: ``REPO/<name>/<version>/ferry.yaml``, several models and versions each.

A version Ferry could not build from another layout (``ferry.bundle.layouts``) holds ``unservable.txt``
instead, with the reason: it is listed like any version and fails to load with that reason, so it shows
FAILED in ``/models`` and ``/ready`` while the others serve.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ferry.bundle.manifest import MANIFEST_FILE, UNSERVABLE_FILE


@dataclass(frozen=True)
class BundleRef:
    name: str
    version: str
    path: Path


def version_key(version: str) -> tuple[tuple[int, str], ...]:
    """Natural order: ``2 < 10`` and ``1.2 < 1.10``; text parts sort after numbers."""
    return tuple((int(p), "") if p.isdigit() else (1 << 62, p) for p in re.split(r"[.\-_+]", version))


def scan_repository(repo: Path) -> dict[str, list[BundleRef]]:
    """Every bundle (or unservable version) in ``repo`` by model name, versions oldest first."""
    models: dict[str, list[BundleRef]] = {}
    if not repo.is_dir():
        return models
    found = {m.parent for m in repo.glob(f"*/*/{MANIFEST_FILE}")}
    found |= {u.parent for u in repo.glob(f"*/*/{UNSERVABLE_FILE}")}
    for version_dir in sorted(found):
        ref = BundleRef(name=version_dir.parent.name, version=version_dir.name, path=version_dir)
        models.setdefault(ref.name, []).append(ref)
    for refs in models.values():
        refs.sort(key=lambda r: version_key(r.version))
    return models


def next_version(repo: Path, name: str) -> str:
    refs = scan_repository(repo).get(name, [])
    numeric = [int(r.version) for r in refs if r.version.isdigit()]
    return str(max(numeric, default=0) + 1)


def record_unservable(repo: Path, name: str, version: str, reason: str) -> Path:
    """Write the version Ferry cannot serve, with the reason its load will fail with."""
    folder = repo / name / version
    folder.mkdir(parents=True, exist_ok=True)
    (folder / UNSERVABLE_FILE).write_text(reason + "\n", encoding="utf-8")
    return folder
