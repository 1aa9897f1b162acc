"""Model files as users save them: what a file holds (by its content), and reading one back.

``ferry build a.pkl b.skops`` composes such files into one pipeline; each is read here, and
refused with its name and what it holds when it is no model or transformer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ferry.bundle.artifacts import FileKind, sniff
from ferry.bundle.trust import BUILD_FLAG, Trust, load_estimator
from ferry.errors import ManifestError


def file_kind(path: Path) -> FileKind:
    """What ``path`` holds, decided by its content, not its name."""
    if not path.is_file():
        raise ManifestError(f"{path}: no such file")
    kind = sniff(path)
    if kind == "unknown":
        raise ManifestError(
            f"{path.name}: not a model file Ferry knows (it reads skops, pickle/joblib, LightGBM text, ONNX, "
            "XGBoost JSON/UBJSON, CatBoost .cbm, by their content); export the model to ONNX, or give a "
            "Python class that loads it (ferry build model.py:Model --include FILE)"
        )
    return kind


def read_estimator(path: Path, trusted: bool) -> tuple[FileKind, Any]:
    """Read a skops or pickle/joblib file as the one loading policy allows (``ferry.bundle.trust``): a
    pickle, or a skops file naming types beyond skops' and scikit-learn's own, only with ``--trusted``."""
    kind = file_kind(path)
    if kind in ("skops", "pickle"):
        return kind, load_estimator(path, Trust(trusted, BUILD_FLAG), path.name)
    raise ManifestError(f"{path.name}: a {kind} model cannot be a pipeline step; give it alone")


def check_step(obj: Any, path: Path, last: bool) -> None:
    """Every step but the last must transform; the last must predict (or at least transform)."""
    predicts, transforms = hasattr(obj, "predict"), hasattr(obj, "transform")
    if not (predicts or transforms):
        raise ManifestError(f"{path.name} holds {_describe(obj)}, not a model or transformer")
    if not last and not transforms:
        raise ManifestError(
            f"{path.name} holds a {type(obj).__name__}, which has no transform(); "
            "every file but the last must transform (the last one predicts)"
        )


def _describe(obj: Any) -> str:
    if isinstance(obj, dict):
        keys = ", ".join(map(str, list(obj)[:5]))
        return f"a dict (keys: {keys})" if keys else "an empty dict"
    if isinstance(obj, list | tuple):
        return f"a {type(obj).__name__} of {len(obj)} items"
    return f"a {type(obj).__module__}.{type(obj).__name__}"
