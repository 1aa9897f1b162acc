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
import warnings
from itertools import zip_longest
from pathlib import Path
from typing import Any

from ferry.bundle.artifacts import FileKind
from ferry.errors import FerryWarning, ManifestError

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
    try:
        booster = (model.get("learner") or {}).get("gradient_booster") or {}
        inner = booster.get("model") or (booster.get("gbtree") or {}).get("model") or {}  # gbtree, or DART's
        encodings = list((inner.get("cats") or {}).get("enc") or [])
    except (AttributeError, TypeError, ValueError):  # not as XGBoost writes it: categorical features keep codes
        return []
    return [_categories(encoded) for encoded in encodings]


def _categories(encoded: Any) -> list[Any] | None:
    """One feature's categories, or None where there are none or they are not as XGBoost writes them (distinct
    values; text as UTF-8 bytes, which XGBoost writes as signed int8, cut at increasing offsets from 0)."""
    try:
        values = list(encoded.get("values") or [])
        offsets = [int(o) for o in encoded.get("offsets") or []]
        if offsets:
            if offsets[0] != 0 or offsets[-1] != len(values) or any(a > b for a, b in itertools.pairwise(offsets)):
                return None
            raw = bytes(int(v) & 0xFF for v in values)
            categories: list[Any] = [raw[a:b].decode("utf-8") for a, b in itertools.pairwise(offsets)]
        else:
            categories = [int(v) if float(v).is_integer() else float(v) for v in values]
    except (AttributeError, TypeError, ValueError, OverflowError):
        return None
    if not categories or len(set(categories)) != len(categories):
        return None
    return categories


def xgboost_inferred(model: dict[str, Any]) -> Inferred:
    learner = model.get("learner") or {}
    param = learner.get("learner_model_param") or {}
    width = int(param.get("num_feature", 0))
    names = learner.get("feature_names") or [f"f{i}" for i in range(width)]
    # XGBoost takes a missing value (null, NaN) in any feature: each split has its default direction.
    features: list[dict[str, Any]] = [{"name": str(n), "allow_nan": True} for n in names]
    types = learner.get("feature_types") or []
    for feature, kind, categories in zip_longest(features, types, xgboost_categories(model)):
        if feature is None or kind != "c":
            continue
        if categories:  # fitted on a pandas categorical: clients send its categories, by name
            feature.update(dtype="category", categories=categories, example=categories[0])
        else:
            warnings.warn(
                f"categorical feature '{feature['name']}': the file holds no categories Ferry can read (XGBoost "
                "before 2.1, or text it saved cut short); clients send XGBoost's codes for it",
                FerryWarning,
                stacklevel=2,
            )
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


def load_xgboost(path: Path) -> Any:
    """XGBoost's Booster of the file; a file XGBoost refuses is a ``ManifestError`` with the first line of its
    message (the rest is XGBoost's native stack trace)."""
    xgboost = library("xgboost")
    try:
        return xgboost.Booster(model_file=str(path))
    except xgboost.core.XGBoostError as exc:
        reason = (str(exc).strip().splitlines() or ["unreadable"])[0][:300]
        raise ManifestError(f"{path.name}: XGBoost cannot read it: {reason}") from None


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
