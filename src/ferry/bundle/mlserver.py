"""An MLServer repository (folders holding ``model-settings.json``), converted into hashed Ferry bundles.

Each folder's ``name`` and ``parameters.version`` become the bundle's, so clients find the same
model names and versions on the V2 REST and gRPC paths. The SKLearn and LightGBM runtimes are read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ferry.errors import ManifestError

SETTINGS_FILE = "model-settings.json"
# ``metadata.source`` of a converted bundle: its v2 input takes any name, as MLServer's runtimes do.
SOURCE = "mlserver"

# MLServer's implementation -> the files it looks for when parameters.uri is not given.
_IMPLEMENTATIONS = {
    "mlserver_sklearn.SKLearnModel": ("model.joblib", "model.pickle", "model.pkl"),
    "mlserver_lightgbm.LightGBMModel": ("model.bst", "model.txt"),
}


def is_mlserver_repository(path: Path) -> bool:
    return path.is_dir() and any(path.rglob(SETTINGS_FILE))


def mlserver_models(folder: Path) -> list[tuple[str, str | None, Path]]:
    """``(name, version, model file)`` of every model folder; errors name the settings file."""
    models = []
    for settings_path in sorted(folder.rglob(SETTINGS_FILE)):
        settings = _read(settings_path)
        implementation = settings.get("implementation", "")
        if implementation not in _IMPLEMENTATIONS:
            known = ", ".join(_IMPLEMENTATIONS)
            raise ManifestError(f"{settings_path}: implementation '{implementation}'; Ferry reads {known}")
        parameters = settings.get("parameters") or {}
        name = str(settings.get("name") or settings_path.parent.name)
        version = parameters.get("version")
        models.append((name, str(version) if version else None, _model_file(settings_path, parameters, implementation)))
    return models


def _read(path: Path) -> dict[str, Any]:
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(settings, dict):
        raise ManifestError(f"{path}: expected a JSON object")
    return settings


def _model_file(settings_path: Path, parameters: dict[str, Any], implementation: str) -> Path:
    folder = settings_path.parent
    uri = parameters.get("uri")
    candidates = [uri] if uri else list(_IMPLEMENTATIONS[implementation])
    for candidate in candidates:
        path = (folder / str(candidate)).resolve()
        if path.is_relative_to(folder.resolve()) and path.is_file():
            return path
    raise ManifestError(f"{settings_path}: no model file ({', '.join(map(str, candidates))}) in {folder}")
