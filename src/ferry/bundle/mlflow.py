"""An MLflow model folder (``MLmodel``), read without mlflow: its model flavor and its signature.

The model inside is rebuilt into an ordinary bundle (skops, LightGBM text, XGBoost or CatBoost files, ONNX;
compiled where it can be), so neither mlflow nor its pickle format is needed to serve it. Without a signature,
MLflow hands the client's columns to the model as they are, by position; so does Ferry (``positional_columns``).
A ``python_function`` model that is Python code (``python_model``, ``loader_module``) becomes a class bundle
over the folder as it is (``write_pyfunc``, ``ferry.runtimes.pyfunc``), built only on the operator's trust.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ferry.errors import ManifestError, UntrustedCode

if TYPE_CHECKING:
    from ferry.bundle.manifest import Manifest
    from ferry.bundle.trust import Trust

MLMODEL_FILE = "MLmodel"
SOURCE = "mlflow"  # ``metadata.source`` of a bundle built from an MLflow folder
PYFUNC_FOLDER = "mlflow_model"  # where a pyfunc bundle keeps the MLflow folder, as it is
CODE_FLAGS = "ferry build --trusted, or ferry serve --trust-code"
# The class bundle's entrypoint: the folder beside it, read by Ferry's pyfunc adapter.
_PYFUNC_ENTRYPOINT = '''"""An MLflow python_function model ({what}), written by ferry build (ferry.runtimes.pyfunc)."""

from pathlib import Path

from ferry.runtimes.pyfunc import MLflowPyfunc


class Model(MLflowPyfunc):
    folder = Path(__file__).parent / "{folder}"
    input_format = "{input_format}"
'''
# A pyfunc model without a signature takes rows of any width, as a DataFrame with MLflow's positional columns.
_ANY_ROWS = {"kind": "tensor", "tensors": [{"name": "input", "dtype": "float64", "shape": [-1, -1]}]}

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
        code = f" (its python_function flavor is Python code, which runs only on trust: {CODE_FLAGS})"
        raise ManifestError(
            f"{folder.name}: MLflow flavors {known}; Ferry reads the {', '.join(_FILE_FLAVORS)} flavors"
            + (code if _code_flavor(flavors) else "")
        )
    key, default = _FILE_FLAVORS[flavor]
    return _inside(folder, str((flavors[flavor] or {}).get(key, default)))


def pyfunc_flavor(folder: Path) -> dict[str, Any] | None:
    """The ``python_function`` flavor of a folder whose model is Python code and nothing Ferry reads itself."""
    try:
        flavors = _mlmodel(folder).get("flavors") or {}
    except ManifestError:
        return None
    if not isinstance(flavors, dict) or any(f in flavors for f in _FILE_FLAVORS):
        return None
    return _code_flavor(flavors)


def _code_flavor(flavors: dict[str, Any]) -> dict[str, Any] | None:
    pyfunc = flavors.get("python_function")
    return pyfunc if isinstance(pyfunc, dict) and ("loader_module" in pyfunc or "python_model" in pyfunc) else None


def check_pyfunc_trust(folder: Path, trust: Trust, subject: str) -> None:
    """Refuse, before anything of it is read, a pyfunc model without the operator's trust in code."""
    if not trust.granted:
        raise UntrustedCode(
            f"{subject}: an MLflow python_function model ({_pyfunc_what(pyfunc_flavor(folder) or {})}) is Python "
            f"code that runs as it loads and predicts; {trust.advice()}"
        )


def write_pyfunc(
    folder: Path, staging: Path, options: dict[str, Any], trust: Trust
) -> tuple[str, dict[str, Any], dict[str, Any], None]:
    """A class bundle over the pyfunc folder, copied as it is: the builder's ``Inferred`` for it."""
    check_pyfunc_trust(folder, trust, folder.name)
    pyfunc = pyfunc_flavor(folder) or {}
    schema = _signature_schema(_mlmodel(folder).get("signature"), folder)
    shutil.copytree(folder, staging / PYFUNC_FOLDER, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    entrypoint = _PYFUNC_ENTRYPOINT.format(
        what=_pyfunc_what(pyfunc), folder=PYFUNC_FOLDER, input_format="frame" if schema else "array"
    )
    (staging / "model.py").write_text(entrypoint, encoding="utf-8")
    options.setdefault("entrypoint", "model.py:Model")
    inferred = {**schema, "frame": True} if schema else _ANY_ROWS
    return "python", inferred, {"kind": "tensor"}, None


def _pyfunc_what(pyfunc: dict[str, Any]) -> str:
    if pyfunc.get("python_model"):
        return f"python_model {pyfunc['python_model']}, a cloudpickle"
    return f"loader_module {pyfunc.get('loader_module')}"


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
