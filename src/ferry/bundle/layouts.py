"""The folders users already have, read as they are: an MLServer repository, an MLflow model folder, a KServe
storage folder (a model file at its root). Each yields the models to build into Ferry bundles, or why one cannot be.

What a file is comes from its content (``ferry.bundle.files``); a pickle is read only with the operator's flag,
which the build or the server checks, as for any file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from ferry.bundle.manifest import MANIFEST_FILE
from ferry.bundle.mlserver import SETTINGS_FILE
from ferry.bundle.sources import SourceModel as SourceModel  # re-exported: what a layout yields

Layout = Literal["mlserver", "mlflow", "kserve"]

# What KServe's model servers look for at the root of a storage folder (sklearn, xgboost, lightgbm, ONNX via
# Triton, CatBoost as MLServer's), in the order tried; the file's content, not its name, says what it is.
KSERVE_FILES = (
    "model.joblib",
    "model.pkl",
    "model.pickle",
    "model.bst",
    "model.json",
    "model.ubj",
    "model.onnx",
    "model.txt",
    "model.cbm",
)
KSERVE_SOURCE = "kserve"


def layout_of(path: Path) -> Layout | None:
    """Which layout ``path`` is, if Ferry converts it; None for a Ferry repository or bundle, or anything else."""
    from ferry.bundle.mlflow import is_mlflow_folder
    from ferry.bundle.mlserver import is_mlserver_repository
    from ferry.bundle.repository import scan_repository

    if not path.is_dir() or (path / MANIFEST_FILE).is_file():
        return None
    if is_mlflow_folder(path):
        return "mlflow"
    if (path / SETTINGS_FILE).is_file():  # one MLServer model folder: its settings name it
        return "mlserver"
    if any((path / name).is_file() for name in KSERVE_FILES):
        return "kserve"
    if is_mlserver_repository(path) and not scan_repository(path):
        return "mlserver"
    return None


def source_models(path: Path, layout: Layout, name: str | None = None) -> list[SourceModel]:
    """The models of ``path``; an MLflow or KServe folder's one model is named ``name``, else after the folder."""
    from ferry.bundle.mlflow import mlflow_metadata
    from ferry.bundle.mlserver import mlserver_models

    if layout == "mlserver":
        return mlserver_models(path)
    named = name or path.resolve().name
    if layout == "mlflow":
        return [SourceModel(named, None, path, mlflow_metadata(path))]
    found = [path / f for f in KSERVE_FILES if (path / f).is_file()]
    if len(found) > 1:
        files = ", ".join(f.name for f in found)
        problem = f"{path.name}: a KServe folder holds one model file at its root; it holds {files}"
        return [SourceModel(named, None, None, {"source": KSERVE_SOURCE}, problem)]
    return [SourceModel(named, None, found[0], {"source": KSERVE_SOURCE})]
