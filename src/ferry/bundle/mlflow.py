"""An MLflow model folder (``MLmodel``), read without mlflow: its sklearn or lightgbm flavor and its signature.

The model inside is rebuilt into an ordinary bundle (skops or LightGBM text, compiled where it can be),
so neither mlflow nor its pickle format is needed to serve it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from ferry.bundle.files import read_estimator
from ferry.errors import ManifestError

MLMODEL_FILE = "MLmodel"

# MLflow column types -> Ferry feature dtypes.
_DTYPES = {
    "double": "float64",
    "float": "float32",
    "long": "int64",
    "integer": "int32",
    "boolean": "bool",
    "string": "string",
}


def is_mlflow_folder(path: Path) -> bool:
    return path.is_dir() and (path / MLMODEL_FILE).is_file()


def read_mlflow(folder: Path, trusted: bool) -> tuple[Any, dict[str, Any] | None]:
    """The fitted model in ``folder`` and, from its signature, the input schema (None without one)."""
    try:
        mlmodel = yaml.safe_load((folder / MLMODEL_FILE).read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ManifestError(f"{folder / MLMODEL_FILE}: not valid YAML: {exc}") from None
    flavors = mlmodel.get("flavors") or {}
    if "sklearn" in flavors:
        artifact = flavors["sklearn"].get("pickled_model", "model.pkl")
    elif "lightgbm" in flavors:
        artifact = flavors["lightgbm"].get("data", "model.lgb")
    else:
        known = ", ".join(sorted(flavors)) or "none"
        raise ManifestError(f"{folder}: MLflow flavors {known}; Ferry reads the sklearn and lightgbm flavors")
    path = _inside(folder, artifact)
    model = _read_model(path, trusted)
    return model, _signature_schema(mlmodel.get("signature"), folder)


def _inside(folder: Path, name: str) -> Path:
    path = (folder / name).resolve()
    if not path.is_relative_to(folder.resolve()) or not path.is_file():
        raise ManifestError(f"{folder}: MLmodel names '{name}', which is not a file in the folder")
    return path


def _read_model(path: Path, trusted: bool) -> Any:
    from ferry.bundle.files import file_kind

    if file_kind(path) == "lightgbm":
        import lightgbm

        return lightgbm.Booster(model_file=str(path))
    _, model = read_estimator(path, trusted)  # skops, or a (cloud)pickle only with --trusted
    return model


def _signature_schema(signature: Any, folder: Path) -> dict[str, Any] | None:
    """Column signatures become named features; a tensor signature leaves the schema to the model."""
    if not isinstance(signature, dict) or not signature.get("inputs"):
        return None
    try:
        columns = json.loads(signature["inputs"])
    except (TypeError, json.JSONDecodeError):
        raise ManifestError(f"{folder / MLMODEL_FILE}: signature.inputs is not JSON") from None
    if not all(isinstance(c, dict) and "name" in c and c.get("type") in _DTYPES for c in columns):
        return None
    return {"kind": "features", "features": [{"name": c["name"], "dtype": _DTYPES[c["type"]]} for c in columns]}
