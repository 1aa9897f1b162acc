"""An MLServer repository (folders holding ``model-settings.json``), converted into hashed Ferry bundles.

Each folder's ``name`` and ``parameters.version`` become the bundle's, so clients find the same
model names and versions on the V2 REST and gRPC paths. The SKLearn, LightGBM, XGBoost, CatBoost and
MLflow runtimes are read; a folder Ferry cannot run (another implementation, no model file, bad JSON)
is one model that fails, with the reason, not a repository that fails.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ferry.bundle.sources import SourceModel
from ferry.errors import ManifestError

__all__ = ["SETTINGS_FILE", "SOURCE", "is_mlserver_repository", "mlserver_models"]
SETTINGS_FILE = "model-settings.json"  # MLServer's, in each model folder
# ``metadata.source`` of a converted bundle: its v2 input takes any name, as MLServer's runtimes do.
SOURCE = "mlserver"
MLFLOW_RUNTIME = "mlserver_mlflow.MLflowRuntime"  # its uri is an MLflow model folder

# MLServer's implementation -> the files it looks for when parameters.uri is not given (its runtimes' own lists).
_IMPLEMENTATIONS = {
    "mlserver_sklearn.SKLearnModel": ("model.joblib", "model.pickle", "model.pkl"),
    "mlserver_lightgbm.LightGBMModel": ("model.bst", "model.txt"),
    "mlserver_xgboost.XGBoostModel": ("model.bst", "model.json", "model.ubj"),
    "mlserver_catboost.CatboostModel": ("model.cbm", "model.bin"),
    MLFLOW_RUNTIME: (".",),
}


def is_mlserver_repository(path: Path) -> bool:
    return path.is_dir() and any(path.rglob(SETTINGS_FILE))


def mlserver_models(folder: Path) -> list[SourceModel]:
    """Every model folder, with what to build it from, or why Ferry cannot (named after its settings file)."""
    models = []
    for settings_path in sorted(folder.rglob(SETTINGS_FILE)):
        where = settings_path.relative_to(folder).as_posix()
        name, version = settings_path.parent.name, None
        try:
            settings = _read(settings_path, where)
            parameters = settings.get("parameters") or {}
            if not isinstance(parameters, dict):
                raise ManifestError(f"{where}: parameters is not an object")
            name = str(settings.get("name") or name)
            version = str(parameters["version"]) if parameters.get("version") else None
            source = _model_file(settings_path, where, parameters, _implementation(settings, where))
        except ManifestError as exc:
            models.append(SourceModel(name, version, None, {"source": SOURCE}, problem=exc.message))
            continue
        models.append(SourceModel(name, version, source, {"source": SOURCE}))
    return models


def _implementation(settings: dict[str, Any], where: str) -> str:
    implementation = str(settings.get("implementation", ""))
    if implementation not in _IMPLEMENTATIONS:
        known = ", ".join(_IMPLEMENTATIONS)
        raise ManifestError(
            f"{where}: implementation '{implementation}' is not one Ferry runs (it reads {known}); export the "
            "model to ONNX, or wrap it in a Python class (ferry build model.py:Model)"
        )
    return implementation


def _read(path: Path, where: str) -> dict[str, Any]:
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{where}: not valid JSON: {exc}") from None
    if not isinstance(settings, dict):
        raise ManifestError(f"{where}: expected a JSON object")
    return settings


def _model_file(settings_path: Path, where: str, parameters: dict[str, Any], implementation: str) -> Path:
    folder = settings_path.parent
    uri = parameters.get("uri")
    candidates = [uri] if uri else list(_IMPLEMENTATIONS[implementation])
    for candidate in candidates:
        path = (folder / str(candidate)).resolve()
        inside = path.is_relative_to(folder.resolve())
        if inside and (path.is_file() or (implementation == MLFLOW_RUNTIME and path.is_dir())):
            return path
    raise ManifestError(f"{where}: no model file ({', '.join(map(str, candidates))}) in its folder")
