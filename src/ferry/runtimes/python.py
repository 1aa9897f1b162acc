"""A user's Python class with ``load()`` and ``predict(batch)``, the Seldon-style wrapper."""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ferry.bundle.artifacts import artifact_file
from ferry.bundle.manifest import Manifest
from ferry.errors import BundleError
from ferry.runtimes.base import Prediction, Runtime


class PythonRuntime(Runtime):
    """Calls ``predict(X)``, or Seldon's ``predict(X, feature_names)`` / ``predict(X, feature_names, meta)``."""

    imports_code = True  # load_bundle refuses it without the server's --trust-code

    def __init__(self, model: Any, manifest: Manifest) -> None:
        self.model = model
        self.labels = manifest.labels
        self.feature_names = [f.name for f in manifest.input.features]
        self.arity = _positional_arity(model.predict)

    @classmethod
    def load(cls, bundle_dir: Path, manifest: Manifest, trust_pickle: bool) -> Runtime:
        entrypoint = manifest.options.get("entrypoint", "model.py:Model")
        filename, _, class_name = entrypoint.partition(":")
        path = artifact_file(bundle_dir, manifest.artifacts, filename, "options.entrypoint")
        module_name = f"ferry_bundle_{manifest.name}_{manifest.version}".replace(".", "_").replace("-", "_")
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise BundleError(f"{manifest.name}: cannot import {filename}")
        module = importlib.util.module_from_spec(spec)
        with _bundle_on_path(path.parent):  # `from featurizer import clean` finds the bundle's own file
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
            model = getattr(module, class_name)()
            if hasattr(model, "load"):
                model.load()
        sys.modules[module_name] = module  # the class's own module stays, by its bundle-unique name
        return cls(model, manifest)

    def predict(self, batch: Any) -> Prediction:
        if self.arity >= 3:
            result = self.model.predict(batch, self.feature_names, {})
        elif self.arity == 2:
            result = self.model.predict(batch, self.feature_names)
        else:
            result = self.model.predict(batch)
        values = result.tolist() if isinstance(result, np.ndarray) else list(result)
        return Prediction(values=values)


def _positional_arity(method: Any) -> int:
    """How many positional arguments a bound ``predict`` takes (1, or Seldon's 2 or 3)."""
    try:
        parameters = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):
        return 1
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters):
        return 1
    return sum(1 for p in parameters if p.kind in kinds and p.default is inspect.Parameter.empty) or 1


@contextlib.contextmanager
def _bundle_on_path(folder: Path) -> Iterator[None]:
    """Import from ``folder`` while the class loads, then forget the modules found there.

    The class keeps the modules it imported; taking them out of ``sys.modules`` lets the next bundle
    import its own ``featurizer.py`` rather than this one's. No bytecode is written into the bundle,
    whose files are hashed.
    """
    root = str(folder.resolve())
    before = set(sys.modules)
    writes_bytecode = sys.dont_write_bytecode
    sys.path.insert(0, root)
    sys.dont_write_bytecode = True
    try:
        yield
    finally:
        sys.dont_write_bytecode = writes_bytecode
        with contextlib.suppress(ValueError):
            sys.path.remove(root)
        for name in set(sys.modules) - before:
            origin = getattr(sys.modules[name], "__file__", None) or ""
            if origin.startswith(root + "/"):
                del sys.modules[name]
