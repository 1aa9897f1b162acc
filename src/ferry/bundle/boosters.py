"""XGBoost and CatBoost models as their libraries save them: the file kept as it is, and what it says.

Neither format runs code as it loads (XGBoost's JSON or UBJSON, CatBoost's ``.cbm``), so no trust flag is
needed. The build reads the file with its library once, to learn the input width and names, whether it
classifies, and its classes; ``ferry.runtimes.compile`` then compiles it where the evaluator is exact.
"""

from __future__ import annotations

import itertools
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ferry.bundle.artifacts import FileKind
from ferry.errors import ManifestError

# (runtime, input schema, output schema, labels), as the builder records them.
Inferred = tuple[str, dict[str, Any] | None, dict[str, Any], list[str] | None]

XGBOOST_ARTIFACTS = ("model.json", "model.ubj")
CATBOOST_ARTIFACT = "model.cbm"
_CATBOOST_CLASSIFIERS = {"Logloss", "CrossEntropy", "MultiClass", "MultiClassOneVsAll"}


def library(name: str) -> Any:
    """Import XGBoost or CatBoost, or say which extra brings it."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        raise ManifestError(f"reading a {name} model needs {name}: pip install 'ferry[{name}]'") from None


def booster_file(path: Path, kind: FileKind, staging: Path) -> Inferred:
    """Copy an XGBoost or CatBoost file into the bundle and infer its schema, outputs and classes."""
    if kind == "xgboost":
        artifact = "model.ubj" if _ubjson(path) else "model.json"
        shutil.copy2(path, staging / artifact)
        return xgboost_inferred(xgboost_json(staging / artifact))
    shutil.copy2(path, staging / CATBOOST_ARTIFACT)
    return catboost_inferred(staging / CATBOOST_ARTIFACT)


def booster_object(model: Any, staging: Path) -> Inferred:
    """An XGBoost (``XGBModel`` or ``Booster``) or CatBoost model object, saved in its own format."""
    if type(model).__module__.startswith("xgboost"):
        booster = model.get_booster() if hasattr(model, "get_booster") else model
        if hasattr(model, "get_booster"):  # the scikit-learn wrapper records its estimator type in the file
            model.save_model(str(staging / "model.json"))
        else:
            booster.save_model(str(staging / "model.json"))
        return xgboost_inferred(xgboost_json(staging / "model.json"))
    model.save_model(str(staging / CATBOOST_ARTIFACT))
    return catboost_inferred(staging / CATBOOST_ARTIFACT)


def _ubjson(path: Path) -> bool:
    with path.open("rb") as fh:
        head = fh.read(2)
    return len(head) == 2 and head[0:1] == b"{" and head[1:2] in b"iUIlL"


def xgboost_json(path: Path) -> dict[str, Any]:
    """The model as XGBoost's JSON: read as text where it is, else through XGBoost (UBJSON)."""
    if not _ubjson(path):
        try:
            model: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
            return model
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ManifestError(f"{path.name}: not valid XGBoost JSON: {exc}") from None
    booster = library("xgboost").Booster(model_file=str(path))
    converted: dict[str, Any] = json.loads(booster.save_raw("json"))
    return converted


def xgboost_categories(model: dict[str, Any]) -> list[list[Any] | None]:
    """Per feature, the categories XGBoost (2.1+) saved for a categorical one, in its code order (a code is the
    category's index here, as pandas' were when it was fitted): text, or numbers; None for the others."""
    booster = (model.get("learner") or {}).get("gradient_booster") or {}
    inner = booster.get("model") or (booster.get("gbtree") or {}).get("model") or {}  # gbtree, or DART's
    found: list[list[Any] | None] = []
    for encoded in (inner.get("cats") or {}).get("enc") or []:
        try:
            values = encoded.get("values") or []
            offsets = encoded.get("offsets") or []
            if offsets:  # UTF-8 bytes, one slice per category
                found.append([bytes(values[a:b]).decode("utf-8") for a, b in itertools.pairwise(offsets)])
            elif values:
                found.append([int(v) if float(v).is_integer() else float(v) for v in values])
            else:
                found.append(None)
        except (AttributeError, TypeError, ValueError):  # not as XGBoost writes it: served by code, as before
            found.append(None)
    return found


def xgboost_inferred(model: dict[str, Any]) -> Inferred:
    learner = model.get("learner") or {}
    param = learner.get("learner_model_param") or {}
    width = int(param.get("num_feature", 0))
    names = learner.get("feature_names") or [f"f{i}" for i in range(width)]
    # XGBoost takes a missing value (null, NaN) in any feature: each split has its default direction.
    features: list[dict[str, Any]] = [{"name": str(n), "allow_nan": True} for n in names]
    types = learner.get("feature_types") or []
    for feature, kind, categories in zip(features, types, xgboost_categories(model), strict=False):
        if kind == "c" and categories:  # fitted on a pandas categorical: clients send its categories, by name
            feature.update(dtype="category", categories=categories, example=categories[0])
    schema = {"kind": "features", "features": features}
    attributes = learner.get("attributes") or {}
    try:
        sklearn = json.loads(attributes.get("scikit_learn", "{}"))
    except json.JSONDecodeError:
        sklearn = {}
    objective = str((learner.get("objective") or {}).get("name", ""))
    if sklearn.get("_estimator_type") == "classifier" and objective.startswith(("binary:", "multi:")):
        classes = max(2, int(param.get("num_class", 0)))
        # XGBClassifier's classes are 0..n-1 and it answers them as integers.
        return "xgboost", schema, {"kind": "label", "dtype": "int64"}, [str(i) for i in range(classes)]
    return "xgboost", schema, {"kind": "number", "dtype": "float32"}, None


def catboost_inferred(path: Path) -> Inferred:
    model = load_catboost(path)
    names = list(model.feature_names_ or [])
    if [str(n) for n in names] == [str(i) for i in range(len(names))]:  # CatBoost's own default names
        names = [f"f{i}" for i in range(len(names))]
    if model.get_cat_feature_indices() or model.get_text_feature_indices():
        raise ManifestError(
            f"{path.name}: a CatBoost model with categorical or text features; Ferry takes numeric features "
            "(export it to ONNX, or serve it from a Python class)"
        )
    # CatBoost takes a missing value unless it was fitted with nan_mode=Forbidden (its default is Min).
    missing = str(model.get_all_params().get("nan_mode", "Min")) != "Forbidden"
    features = [{"name": str(n), **({"allow_nan": True} if missing else {})} for n in names]
    schema = {"kind": "features", "features": features}
    loss = str(model.get_all_params().get("loss_function", "")).split(":")[0]
    found = getattr(model, "classes_", None)
    classes = [] if found is None else [c.item() if hasattr(c, "item") else c for c in found]
    if loss in _CATBOOST_CLASSIFIERS and classes:
        integer = all(isinstance(c, int) and not isinstance(c, bool) for c in classes)
        return (
            "catboost",
            schema,
            {"kind": "label", "dtype": "int64" if integer else "string"},
            [str(c) for c in classes],
        )
    return "catboost", schema, {"kind": "number"}, None


def load_catboost(path: Path) -> Any:
    model = library("catboost").CatBoost()
    model.load_model(str(path))
    return model


def catboost_json(model: Any) -> dict[str, Any]:
    """The model as CatBoost's JSON export (its oblivious trees, borders, NaN treatment, bias)."""
    with tempfile.TemporaryDirectory(prefix="ferry-catboost-") as folder:
        target = Path(folder) / "model.json"
        model.save_model(str(target), format="json")
        exported: dict[str, Any] = json.loads(target.read_text(encoding="utf-8"))
        return exported
