"""A user's Python class with ``load()`` and ``predict(batch)``, the Seldon-style wrapper.

What ``predict`` receives is the class's choice, by its attribute ``input_format``: ``"array"`` (the default),
a 2-D numpy array of rows in feature order (float64 for numbers, objects where a column is text); ``"records"``,
a list of ``{feature: value}`` dicts, one per row; ``"frame"``, a pandas DataFrame of the features with their
dtypes (the default where the bundle's input is a frame). Text models get a list of ``str``, image models a
list of ``bytes``. It returns one value per row: a list, a numpy array, a pandas Series or DataFrame.
"""

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
from ferry.bundle.manifest import Feature, Manifest
from ferry.errors import BundleError, ModelError
from ferry.runtimes.base import Prediction, Runtime


class PythonRuntime(Runtime):
    """Calls ``predict(X)``, or Seldon's ``predict(X, feature_names)`` / ``predict(X, feature_names, meta)``."""

    imports_code = True  # load_bundle refuses it without the server's --trust-code

    def __init__(self, model: Any, manifest: Manifest) -> None:
        self.model = model
        self.labels = manifest.labels
        self.features = manifest.input.features
        self.feature_names = [f.name for f in self.features]
        self.arity = _positional_arity(model.predict)
        self.input_format = input_format(model, manifest)

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
        given = self._arranged(batch)
        if self.arity >= 3:
            result = self.model.predict(given, self.feature_names, {})
        elif self.arity == 2:
            result = self.model.predict(given, self.feature_names)
        else:
            result = self.model.predict(given)
        return Prediction(values=per_row(result, len(batch)))

    def _arranged(self, batch: Any) -> Any:
        if self.input_format == "records":
            return records(batch, self.features)
        if self.input_format == "frame":
            from ferry.runtimes.frames import to_frame

            return to_frame(batch, self.features)
        return batch


INPUT_FORMATS = ("array", "records", "frame")
_CASTS: dict[str, Any] = {"int64": int, "int32": int, "bool": bool, "float64": float, "float32": float}


def records(batch: Any, features: list[Feature]) -> list[dict[str, Any]]:
    """Rows as ``{feature: value}`` dicts of plain Python values, each of its feature's type (an array of numbers
    holds integers and booleans as floats; JSON's ``3`` for a float feature is ``3.0``); a missing value is None."""
    rows = batch.tolist() if isinstance(batch, np.ndarray) else batch
    names = [f.name for f in features]
    casts = [_CASTS.get(f.dtype) for f in features]
    if any(casts):
        rows = [
            [None if v is None or v != v else v if c is None else c(v) for v, c in zip(row, casts, strict=True)]
            for row in rows
        ]
    return [dict(zip(names, row, strict=True)) for row in rows]


def input_format(model: Any, manifest: Manifest) -> str:
    """The class's ``input_format``, checked against what the bundle takes: records and frames need named features."""
    default = "frame" if manifest.input.frame else "array"
    chosen = getattr(model, "input_format", default)
    where = f"{manifest.name}: {type(model).__name__}.input_format"
    if chosen not in INPUT_FORMATS:
        raise BundleError(f"{where} is {chosen!r}; expected one of {', '.join(map(repr, INPUT_FORMATS))}")
    if chosen != "array" and (manifest.input.kind != "features" or not manifest.input.features):
        raise BundleError(
            f"{where} is {chosen!r}, which needs named features: build with --features name:type,..."
            + (f" (this bundle takes {manifest.input.kind})" if manifest.input.kind != "tensor" else "")
        )
    return str(chosen)


def per_row(result: Any, rows: int) -> list[Any]:
    """``predict``'s answer as one value per row: a list, a numpy array, a pandas Series or DataFrame."""
    if hasattr(result, "to_numpy") and not isinstance(result, np.ndarray):  # pandas, without importing it
        result = result.to_numpy()
    values = result.tolist() if isinstance(result, np.ndarray) else list(result)
    if len(values) != rows:
        raise ModelError(f"predict returned {len(values)} values for {rows} rows; it must return one per row")
    return values


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
