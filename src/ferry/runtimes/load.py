"""Load a bundle folder into a ready model: manifest read, hashes verified, runtime loaded."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ferry.bundle.hashing import verify_artifacts
from ferry.bundle.manifest import Manifest, read_manifest
from ferry.bundle.requirements import requirements_file
from ferry.runtimes import Runtime, runtime_class
from ferry.runtimes.base import require_code_trust

logger = logging.getLogger("ferry.bundle")


@dataclass
class LoadedModel:
    manifest: Manifest
    runtime: Runtime
    path: Path
    warnings: list[str] = field(default_factory=list)


MODEL_OVERHEAD_BYTES = 64 * 1024  # the Python objects around a loaded model: runtime, codec, batcher


def verify_bundle(bundle_dir: Path, original: bool = False) -> int:
    """Check a bundle without loading it (manifest read, every artifact's SHA-256); its estimated loaded bytes.

    The estimate is the size of the files its runtime opens (the compiled ``.npy`` arrays where
    there is a compiled form, else every artifact) plus a fixed overhead per model.
    """
    manifest = read_manifest(bundle_dir)
    verify_artifacts(bundle_dir, manifest.artifacts)
    requirements_file(bundle_dir, manifest)  # every path the manifest names stays inside the bundle
    return loaded_bytes(bundle_dir, manifest, original)


def loaded_bytes(bundle_dir: Path, manifest: Manifest, original: bool = False) -> int:
    names = list(manifest.artifacts)
    if manifest.options.get("compiled") and not original:
        names = [n for n in names if n.endswith(".npy")]
    return MODEL_OVERHEAD_BYTES + sum((bundle_dir / n).stat().st_size for n in names)


def load_bundle(
    bundle_dir: Path, trust_pickle: bool = False, original: bool = False, trust_code: bool = False
) -> LoadedModel:
    """Read the manifest, verify every artifact's SHA-256, then hand the bundle to its runtime.

    A bundle with a compiled form (``options.compiled``) loads that, without its framework, unless
    ``original`` asks for the original artifact. Trust is the server's alone: ``trust_pickle`` lets
    pickles load; ``trust_code`` lets a bundle's Python class be imported, and pickles load too.
    """
    manifest = read_manifest(bundle_dir)
    verify_artifacts(bundle_dir, manifest.artifacts)
    requirements_file(bundle_dir, manifest)  # every path the manifest names stays inside the bundle
    name = "compiled" if manifest.options.get("compiled") and not original else manifest.runtime
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runtime_cls = runtime_class(name)
        require_code_trust(runtime_cls, manifest, trust_code)
        runtime = runtime_cls.load(bundle_dir, manifest, trust_pickle or trust_code)
    drift = [m for m in (str(w.message) for w in caught) if "was built with" in m]
    return LoadedModel(manifest=manifest, runtime=runtime, path=bundle_dir, warnings=drift)
