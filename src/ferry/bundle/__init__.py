"""Model bundles: the manifest schema, the artifact kinds and the pieces a bundle is built from.

This package knows files, not frameworks: it imports no runtime. Loading a bundle into its runtime is
``ferry.runtimes.load``, and compiling a model into its numpy form ``ferry.runtimes.compile``, both a layer
above. Names are imported on first use, so serving (``manifest``, ``repository``) never imports the
build side. Building itself is ``ferry.build`` (``ferry.builder``): it checks the new bundle's sample
through the native codec, as the server will answer it, so it sits above the protocols, not in here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ferry.bundle.manifest import MANIFEST_FILE, Manifest, read_manifest
    from ferry.bundle.repository import BundleRef, scan_repository

_WHERE = {
    "MANIFEST_FILE": "manifest",
    "BundleRef": "repository",
    "Manifest": "manifest",
    "read_manifest": "manifest",
    "scan_repository": "repository",
}

__all__ = [
    "MANIFEST_FILE",
    "BundleRef",
    "Manifest",
    "read_manifest",
    "scan_repository",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'ferry.bundle' has no attribute {name!r}")
    return getattr(importlib.import_module(f"ferry.bundle.{module}"), name)
