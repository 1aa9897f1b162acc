"""A user's Python class with ``load()`` and ``predict(batch)``, the Seldon-style wrapper."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ferry.bundle.artifacts import artifact_file
from ferry.bundle.manifest import Manifest
from ferry.errors import BundleError
from ferry.runtimes.base import Prediction, Runtime, require_trust


class PythonRuntime(Runtime):
    def __init__(self, model: Any, labels: list[str] | None) -> None:
        self.model = model
        self.labels = labels

    @classmethod
    def load(cls, bundle_dir: Path, manifest: Manifest, trust_pickle: bool) -> Runtime:
        entrypoint = manifest.options.get("entrypoint", "model.py:Model")
        filename, _, class_name = entrypoint.partition(":")
        path = artifact_file(bundle_dir, manifest.artifacts, filename, "options.entrypoint")
        require_trust(path, manifest, trust_pickle, what="Python code, and importing it runs that code")
        module_name = f"ferry_bundle_{manifest.name}_{manifest.version}".replace(".", "_").replace("-", "_")
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise BundleError(f"{manifest.name}: cannot import {filename}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
        model = getattr(module, class_name)()
        if hasattr(model, "load"):
            model.load()
        return cls(model, manifest.labels)

    def predict(self, batch: Any) -> Prediction:
        result = self.model.predict(batch)
        values = result.tolist() if isinstance(result, np.ndarray) else list(result)
        return Prediction(values=values)
