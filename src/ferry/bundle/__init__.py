"""Model bundles: the manifest schema, building a bundle from a model, and loading one back."""

from ferry.bundle.build import build
from ferry.bundle.load import LoadedModel, load_bundle
from ferry.bundle.manifest import MANIFEST_FILE, Manifest, read_manifest
from ferry.bundle.repository import BundleRef, scan_repository

__all__ = [
    "MANIFEST_FILE",
    "BundleRef",
    "LoadedModel",
    "Manifest",
    "build",
    "load_bundle",
    "read_manifest",
    "scan_repository",
]
