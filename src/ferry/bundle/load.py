"""Load a bundle folder into a ready model: manifest read, hashes verified, runtime loaded."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ferry.bundle.hashing import verify_artifacts
from ferry.bundle.manifest import Manifest, read_manifest
from ferry.runtimes import Runtime, runtime_class

logger = logging.getLogger("ferry.bundle")


@dataclass
class LoadedModel:
    manifest: Manifest
    runtime: Runtime
    path: Path
    warnings: list[str] = field(default_factory=list)


def load_bundle(bundle_dir: Path, trust_pickle: bool = False, original: bool = False) -> LoadedModel:
    """Read the manifest, verify every artifact's SHA-256, then hand the bundle to its runtime.

    A bundle with a compiled form (``options.compiled``) loads that, without its framework, unless
    ``original`` asks for the original artifact.
    """
    manifest = read_manifest(bundle_dir)
    verify_artifacts(bundle_dir, manifest.artifacts)
    name = "compiled" if manifest.options.get("compiled") and not original else manifest.runtime
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runtime = runtime_class(name).load(bundle_dir, manifest, trust_pickle)
    drift = [m for m in (str(w.message) for w in caught) if "was built with" in m]
    return LoadedModel(manifest=manifest, runtime=runtime, path=bundle_dir, warnings=drift)
