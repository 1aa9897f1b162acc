"""An MLflow model folder (``MLmodel``), read without mlflow: its model flavor and its signature.

The model inside is rebuilt into an ordinary bundle (skops, LightGBM text, XGBoost or CatBoost files, ONNX;
compiled where it can be), so neither mlflow nor its pickle format is needed to serve it. Without a signature,
MLflow hands the client's columns to the model as they are, by position; so does Ferry (``positional_columns``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ferry.errors import ManifestError

if TYPE_CHECKING:
    from ferry.bundle.manifest import Manifest

MLMODEL_FILE = "MLmodel"
SOURCE = "mlflow"  # ``metadata.source`` of a bundle built from an MLflow folder

# MLflow column types -> Ferry feature dtypes.
_DTYPES = {
    "double": "float64",
    "float": "float32",
    "long": "int64",
    "integer": "int32",
    "boolean": "bool",
    "string": "string",
}
# Flavors whose file Ferry reads itself (by its content), and the key naming it, with MLflow's default.
_FILE_FLAVORS = {
    "sklearn": ("pickled_model", "model.pkl"),
    "lightgbm": ("data", "model.lgb"),
    "xgboost": ("data", "model.xgb"),
    "catboost": ("data", "model.cb"),
    "onnx": ("data", "model.onnx"),
}


def is_mlflow_folder(path: Path) -> bool:
    return path.is_dir() and (path / MLMODEL_FILE).is_file()


def read_mlflow(folder: Path, trusted: bool) -> tuple[Any, dict[str, Any] | None]:
    """The fitted model in ``folder`` (an object, or the path of a file Ferry reads as it is) and, from its
    signature, the input schema (None without one)."""
    mlmodel = _mlmodel(folder)
    model = _read_model(_flavor_file(folder, mlmodel), trusted)
    return model, _signature_schema(mlmodel.get("signature"), folder)


def mlflow_model_file(folder: Path) -> Path:
    """The file of ``folder``'s model that Ferry reads (its flavor's), so the caller may check it first."""
    return _flavor_file(folder, _mlmodel(folder))


def _flavor_file(folder: Path, mlmodel: dict[str, Any]) -> Path:
    flavors = mlmodel.get("flavors") or {}
    flavor = next((f for f in _FILE_FLAVORS if f in flavors), None)
    if flavor is None:
        known = ", ".join(sorted(flavors)) or "none"
        pyfunc = flavors.get("python_function") or {}
        code = " (its python_function flavor is Python code: wrap it in a class, ferry build model.py:Model)"
        raise ManifestError(
            f"{folder.name}: MLflow flavors {known}; Ferry reads the {', '.join(_FILE_FLAVORS)} flavors"
            + (code if isinstance(pyfunc, dict) and ("loader_module" in pyfunc or "python_model" in pyfunc) else "")
        )
    key, default = _FILE_FLAVORS[flavor]
    return _inside(folder, str((flavors[flavor] or {}).get(key, default)))


def mlflow_metadata(folder: Path) -> dict[str, Any]:
    """What a bundle built from ``folder`` records of it: its source, and whether it had a signature."""
    try:
        signature = _mlmodel(folder).get("signature")
    except ManifestError:
        signature = None  # the build reports the folder's problem
    has = isinstance(signature, dict) and bool(signature.get("inputs"))
    return {"source": SOURCE, "signature": has}


def positional_columns(manifest: Manifest) -> bool:
    """A model from an MLflow folder without a signature, which knows no column names of its own: MLflow hands
    it whatever columns a client sends, by position, so Ferry takes any names in order too."""
    metadata = manifest.metadata
    if metadata.get("source") != SOURCE or metadata.get("signature") is not False:
        return False
    names = [f.name for f in manifest.input.features]
    return manifest.input.kind == "features" and names == [f"f{i}" for i in range(len(names))]


def _mlmodel(folder: Path) -> dict[str, Any]:
    import yaml  # (not at import: the server reads positional_columns, and never YAML)

    try:
        mlmodel = yaml.safe_load((folder / MLMODEL_FILE).read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{folder.name}/{MLMODEL_FILE}: not valid YAML: {exc}") from None
    if not isinstance(mlmodel, dict):
        raise ManifestError(f"{folder.name}/{MLMODEL_FILE}: expected a mapping")
    return mlmodel


def _inside(folder: Path, name: str) -> Path:
    path = (folder / name).resolve()
    if not path.is_relative_to(folder.resolve()) or not path.is_file():
        raise ManifestError(f"{folder.name}: MLmodel names '{name}', which is not a file in the folder")
    return path


def _read_model(path: Path, trusted: bool) -> Any:
    from ferry.bundle.files import file_kind, read_estimator

    kind = file_kind(path)
    if kind == "lightgbm":
        import lightgbm

        return lightgbm.Booster(model_file=str(path))
    if kind in ("xgboost", "catboost", "onnx"):
        return path  # read by the builder as the file it is
    _, model = read_estimator(path, trusted)  # skops, or a (cloud)pickle only with --trusted
    return model


def _signature_schema(signature: Any, folder: Path) -> dict[str, Any] | None:
    """Column signatures become named features; a tensor signature leaves the schema to the model."""
    if not isinstance(signature, dict) or not signature.get("inputs"):
        return None
    try:
        columns = json.loads(signature["inputs"])
    except (TypeError, json.JSONDecodeError):
        raise ManifestError(f"{folder.name}/{MLMODEL_FILE}: signature.inputs is not JSON") from None
    if not all(isinstance(c, dict) and "name" in c and c.get("type") in _DTYPES for c in columns):
        return None
    return {"kind": "features", "features": [{"name": c["name"], "dtype": _DTYPES[c["type"]]} for c in columns]}
