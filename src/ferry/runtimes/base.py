"""The runtime contract: load a bundle, predict on a batch, return values and probabilities."""

from __future__ import annotations

import logging
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ferry.bundle.artifacts import describe, sniff
from ferry.bundle.manifest import Manifest
from ferry.errors import UntrustedCode, UntrustedPickle

logger = logging.getLogger("ferry.runtime")


@dataclass
class Prediction:
    """Per-row predictions (label names, numbers or lists) and, for classifiers, probabilities."""

    values: list[Any]
    probabilities: np.ndarray | None = None


class Runtime(ABC):
    """Lifecycle: ``load(bundle_dir, manifest, trust_pickle)`` once, then ``predict(batch)`` many times.

    ``batch`` is a 2-D array for features and tensors, a list of ``str`` for text, and a
    list of ``bytes`` for images.
    """

    imports_code: ClassVar[bool] = False  # loading imports the bundle's own Python code (needs --trust-code)

    @classmethod
    @abstractmethod
    def load(cls, bundle_dir: Path, manifest: Manifest, trust_pickle: bool) -> Runtime: ...

    @abstractmethod
    def predict(self, batch: Any) -> Prediction: ...


def require_trust(path: Path, manifest: Manifest, trust_pickle: bool) -> None:
    """Refuse a file only unpickling can read unless the server trusts pickles.

    What a file is comes from its content: anything that is not a skops file can only be unpickled,
    whatever its name. Unpickling is trusted by the server alone (``--trust-pickle`` or ``--trust-code``);
    a bundle's own ``trusted: true`` never counts, since whoever wrote the pickle could write that too.
    """
    kind = sniff(path)
    if kind == "skops" or trust_pickle:
        return
    held = "a pickle" if kind == "pickle" else f"{describe(kind)}, not a skops file, so only unpickling could read it"
    raise UntrustedPickle(
        f"{manifest.name}:{manifest.version}: artifact '{path.name}' is {held}, and unpickling runs arbitrary code. "
        "Start the server with --trust-pickle only if you trust where it came from (the bundle's own "
        "`trusted: true` does not count)."
    )


def require_code_trust(runtime: type[Runtime], manifest: Manifest, trust_code: bool) -> None:
    """Refuse, before anything is imported, a runtime that imports the bundle's code, unless the server
    trusts code (``--trust-code``). Like a pickle, the bundle's own ``trusted: true`` never counts."""
    if runtime.imports_code and not trust_code:
        entrypoint = manifest.options.get("entrypoint", "model.py:Model")
        raise UntrustedCode(
            f"{manifest.name}:{manifest.version}: its Python class ({entrypoint}) is code, and importing it runs "
            "that code. Start the server with --trust-code only if you trust where the bundle came from (the "
            "bundle's own `trusted: true` does not count)."
        )


def warn_version_drift(manifest: Manifest, library: str, installed: str) -> str | None:
    """Warn when the library now installed differs from the one the bundle was built with."""
    built = manifest.metadata.get("libraries", {}).get(library)
    if built and built != installed:
        message = (
            f"{manifest.name}:{manifest.version} was built with {library} {built} "
            f"but {library} {installed} is installed; predictions may differ"
        )
        logger.warning(message)
        warnings.warn(message, stacklevel=2)
        return message
    return None


def class_labels(classes: np.ndarray, labels: list[str] | None) -> list[str]:
    """Names for a classifier's classes: the manifest's labels by index, or the classes themselves."""
    if classes.dtype.kind in "iu" and labels and all(0 <= int(c) < len(labels) for c in classes):
        return [labels[int(c)] for c in classes]
    return [str(c) for c in classes]


def argmax_labels(probabilities: np.ndarray, names: list[str]) -> list[str]:
    lookup = np.asarray(names, dtype=object)
    return list(lookup[np.argmax(probabilities, axis=1)])
