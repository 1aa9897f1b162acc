"""The files a runtime may open: each one listed in the manifest (so hashed at every load), a regular file
inside the bundle folder, and judged by what it holds, never by its name.

Nothing outside the bundle is opened, read or hashed: an absolute name, a ``..`` part or a link that leads
out is refused before any read, and errors name the artifact, never a server path.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path, PurePosixPath
from typing import Literal

from ferry.bundle.manifest import Manifest, bundle_label
from ferry.errors import BundleError, IntegrityError

FileKind = Literal["skops", "pickle", "lightgbm", "onnx", "xgboost", "catboost", "unknown"]

# A pickle of protocol 2 or newer opens with PROTO (0x80); joblib also writes one compressed with zlib,
# gzip, bz2, xz, lzma or lz4. Older protocols have no magic at all, so "unknown" is no proof of safety:
# a runtime that unpickles treats anything that is not positively something else as a pickle.
_PICKLE_MAGIC = (b"\x80", b"x", b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"]\x00\x00", b'\x04"M\x18')
# XGBoost's save_model: a JSON object (or its UBJSON form: ``{``, a length-typed key) whose first key is
# ``learner``, as XGBoost writes it, or one that names ``learner`` and ``gradient_booster`` early on.
_XGBOOST_JSON = re.compile(rb'\s*\{\s*"learner"\s*:|\s*\{(?=.*"learner")(?=.*"gradient_booster")', re.DOTALL)
_XGBOOST_UBJSON = re.compile(rb"\{[iUIlL]\x00*\x07learner\{", re.DOTALL)
_KIND_NAMES = {
    "skops": "a skops file",
    "pickle": "a pickle",
    "lightgbm": "a LightGBM text model",
    "onnx": "an ONNX model",
    "xgboost": "an XGBoost model (JSON or UBJSON)",
    "catboost": "a CatBoost model (.cbm)",
    "unknown": "no format Ferry knows",
}


def contained(bundle_dir: Path, name: str) -> Path:
    """The path of ``name`` inside the bundle, once it is known to be a regular file there."""
    label = bundle_label(bundle_dir)
    parts = PurePosixPath(name).parts
    if not name or PurePosixPath(name).is_absolute() or ".." in parts or "\\" in name or "\0" in name:
        raise IntegrityError(f"{label}: artifact '{name[:200]}' is not a relative path inside the bundle")
    path = bundle_dir.joinpath(*parts)
    if not path.is_symlink() and not path.exists():
        raise IntegrityError(f"{label}: artifact '{name}' is listed in the manifest but missing")
    real = path.resolve()
    if not real.is_relative_to(bundle_dir.resolve()):
        raise IntegrityError(f"{label}: artifact '{name}' is a link that leads out of the bundle")
    if not real.is_file():  # a folder, a FIFO, a device: nothing a model is stored in
        raise IntegrityError(f"{label}: artifact '{name}' is not a regular file")
    return path


def links_leading_out(folder: Path) -> list[str]:
    """Every symbolic link under ``folder`` whose target lies outside it, by its path inside ``folder``: what a
    copy of the folder (``ferry build --include``, ``ferry containerize``) would otherwise read from elsewhere."""
    root = folder.resolve()
    return [
        path.relative_to(folder).as_posix()
        for path in sorted(folder.rglob("*"))  # (a link to a folder is not walked into: it is judged itself)
        if path.is_symlink() and not path.resolve().is_relative_to(root)
    ]


def artifact_file(bundle_dir: Path, artifacts: dict[str, str], name: str, option: str) -> Path:
    """The file a runtime opens for ``option``: only one that the manifest lists, so its hash was checked."""
    if name not in artifacts:
        raise IntegrityError(
            f"{bundle_label(bundle_dir)}: {option} '{str(name)[:200]}' is not listed in the manifest's artifacts, "
            "so its hash is never checked; refusing to open it"
        )
    return contained(bundle_dir, name)


def model_artifact(bundle_dir: Path, manifest: Manifest, default: str, kind: FileKind | None = None) -> Path:
    """The runtime's model file (``options.artifact``, else ``default``): listed, contained and, given
    ``kind``, holding that kind of model."""
    path = artifact_file(bundle_dir, manifest.artifacts, manifest.options.get("artifact", default), "options.artifact")
    if kind is not None:
        require_kind(path, bundle_dir, kind, manifest.runtime)
    return path


def sniff(path: Path) -> FileKind:
    """What a model file holds, from its first bytes (and, for a zip, its table of contents)."""
    with path.open("rb") as fh:
        head = fh.read(4096)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return "skops" if "schema.json" in archive.namelist() else "unknown"
    if head.startswith(_PICKLE_MAGIC):
        return "pickle"
    if head.startswith(b"tree\n"):
        return "lightgbm"
    if head.startswith(b"CBM1"):  # CatBoost's own binary format (flatbuffers behind a magic)
        return "catboost"
    if _XGBOOST_JSON.match(head) or _XGBOOST_UBJSON.match(head):
        return "xgboost"
    if head.startswith(b"\x08"):  # ModelProto's first field, ir_version (field 1, varint), comes first
        return "onnx"
    return "unknown"


def require_kind(path: Path, bundle_dir: Path, expected: FileKind, runtime: str) -> None:
    """Refuse an artifact that does not hold what its runtime reads, naming what it does hold."""
    kind = sniff(path)
    if kind != expected:
        raise BundleError(
            f"{bundle_label(bundle_dir)}: artifact '{path.relative_to(bundle_dir).as_posix()}' holds "
            f"{_KIND_NAMES[kind]}, not {_KIND_NAMES[expected]}, which the {runtime} runtime reads"
        )


def describe(kind: FileKind) -> str:
    return _KIND_NAMES[kind]
