"""One thin adapter per framework. Adding a framework means adding one module and one line here."""

from __future__ import annotations

import importlib

from ferry.runtimes.base import Prediction, Runtime

_RUNTIMES = {
    "sklearn": "ferry.runtimes.sklearn:SklearnRuntime",
    "lightgbm": "ferry.runtimes.lightgbm:LightGBMRuntime",
    "onnx": "ferry.runtimes.onnx:OnnxRuntime",
    "xgboost": "ferry.runtimes.xgboost:XGBoostRuntime",
    "catboost": "ferry.runtimes.catboost:CatBoostRuntime",
    "python": "ferry.runtimes.python:PythonRuntime",
    "compiled": "ferry.runtimes.compiled:CompiledRuntime",  # a bundle's verified numpy form (options.compiled)
}


def runtime_class(name: str) -> type[Runtime]:
    """Import the adapter for ``name`` on first use, so unused frameworks need not be installed."""
    module_name, _, attr = _RUNTIMES[name].partition(":")
    cls: type[Runtime] = getattr(importlib.import_module(module_name), attr)
    return cls


__all__ = ["Prediction", "Runtime", "runtime_class"]
