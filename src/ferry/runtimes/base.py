"""The runtime contract: load a bundle, predict on a batch, return values and probabilities."""

from __future__ import annotations

import logging
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ferry.bundle.artifacts import describe, sniff
from ferry.bundle.manifest import Manifest, OutputSchema
from ferry.errors import UntrustedCode, UntrustedPickle

logger = logging.getLogger("ferry.runtime")


@dataclass
class Prediction:
    """Per-row predictions (label names, numbers or lists) and, for classifiers, probabilities."""

    values: list[Any]
    probabilities: np.ndarray | None = None


def clipped(predict: Callable[[Any], Prediction], output: OutputSchema) -> Callable[[Any], Prediction]:
    """``predict``, with numeric predictions clipped to the declared range (e.g. star ratings to [1, 5]).

    This is the model call the server makes, once per batch; the warm-up and ``ferry build``'s check of the
    sample make the same one, so a bundle answers at build what it answers when served.
    """
    if output.kind != "number" or (output.min is None and output.max is None):
        return predict
    low, high = output.min, output.max

    def clip(batch: Any) -> Prediction:
        prediction = predict(batch)
        values = np.clip(np.asarray(prediction.values, dtype=float), low, high)
        return Prediction(values=values.tolist(), probabilities=prediction.probabilities)

    return clip


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


# A classifier's labels keep their type where the manifest says they are its own integer or boolean classes.
_LABEL_TYPES: dict[str, Any] = {"int64": int, "int32": int, "bool": lambda text: text == "True", "float": float}


def label_values(manifest: Manifest) -> list[Any] | None:
    """The manifest's labels as clients get them: integers and booleans (``output.dtype``) as such, else text.

    ``ferry build`` records a classifier's own integer classes as ``dtype: int64``, so a model trained on
    0/1 answers 0/1, as scikit-learn, MLServer, KServe and MLflow do; ``--labels`` names them as text.
    """
    labels = manifest.labels
    if labels is None:
        return None
    convert = _LABEL_TYPES.get(manifest.output.dtype) if manifest.output.kind == "label" else None
    return [convert(label) for label in labels] if convert is not None else list(labels)


def class_labels(classes: np.ndarray, manifest: Manifest) -> list[Any]:
    """What a classifier answers for each of its classes, by position: the manifest's labels, else the classes."""
    labels = label_values(manifest)
    if labels and len(labels) == len(classes):
        return labels
    if classes.dtype.kind in "iu" and labels and all(0 <= int(c) < len(labels) for c in classes):
        return [labels[int(c)] for c in classes]  # a subset of classes named by index
    return [c if isinstance(c, str) else str(c) for c in classes.tolist()]


def argmax_labels(probabilities: np.ndarray, names: list[Any]) -> list[Any]:
    lookup = np.asarray(names, dtype=object)
    return list(lookup[np.argmax(probabilities, axis=1)])
