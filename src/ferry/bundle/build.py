"""Build a bundle folder from a fitted model: artifacts, their hashes, and ``ferry.yaml``."""

from __future__ import annotations

import contextlib
import inspect
import shutil
import tempfile
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import msgspec

from ferry.bundle.compile import compile_model, load_original
from ferry.bundle.hashing import sha256_file
from ferry.bundle.manifest import (
    CompatRoute,
    Feature,
    InputSchema,
    OutputSchema,
    parse_manifest,
    write_manifest,
)
from ferry.bundle.repository import next_version
from ferry.errors import ManifestError

_LIBRARIES = {"sklearn": "scikit-learn", "lightgbm": "lightgbm", "onnx": "onnxruntime"}


def build(
    model: Any,
    name: str,
    repo: str | Path = "models",
    *,
    version: str | None = None,
    features: list[str] | None = None,
    input_schema: InputSchema | dict[str, Any] | None = None,
    output_schema: OutputSchema | dict[str, Any] | None = None,
    labels: list[str] | None = None,
    sample_input: Any = None,
    metadata: dict[str, Any] | None = None,
    routes: list[CompatRoute | dict[str, Any]] | None = None,
    options: dict[str, Any] | None = None,
    trusted: bool = False,
    training_data: Any = None,
    compile: bool = True,
) -> Path:
    """Write ``repo/name/version/`` and return its path.

    ``model`` is a fitted scikit-learn estimator or pipeline, a LightGBM model, a path to an
    ``.onnx`` file, or a Python class (or instance) with ``load()`` and ``predict(batch)``.
    ``training_data`` (rows in feature order), for a feature model, adds per-feature statistics
    to the metadata, against which ``ferry monitor`` measures drift. ``compile`` adds the model's
    verified numpy form where it has one (``ferry.bundle.compile``), which serves without the framework.
    """
    repo = Path(repo)
    version = version or next_version(repo, name)
    target = repo / name / version
    if target.exists():
        raise ManifestError(f"{target} already exists; bundles are immutable, pick a new version")
    options = dict(options or {})
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=_mkdir(repo)))
    staging.chmod(0o755)  # mkdtemp makes it private; a bundle is read by other users (a container's, say)
    try:
        runtime, inferred_input, inferred_output, inferred_labels = _write_artifacts(model, staging, options, trusted)
        if runtime == "python":
            trusted = True  # the builder hands over its own code
        labels = labels or inferred_labels
        if compile and runtime in ("sklearn", "lightgbm"):
            compile_model(load_original(staging, runtime, options), runtime, staging, options, labels)
        raw: dict[str, Any] = {
            "name": name,
            "version": version,
            "runtime": runtime,
            "input": _schema(input_schema) or _features_schema(features) or inferred_input,
            "output": _schema(output_schema) or inferred_output,
            "labels": labels,
            "sample_input": sample_input,
            "metadata": {**_default_metadata(runtime), **(metadata or {})},
            "options": options,
            "routes": [msgspec.to_builtins(r) if isinstance(r, CompatRoute) else r for r in routes or []],
            "trusted": trusted,
            "artifacts": {p.name: sha256_file(p) for p in sorted(staging.iterdir()) if p.is_file()},
        }
        if raw["input"] is None:
            raise ManifestError(f"{name}: cannot infer the input schema; pass features= or input_schema=")
        if raw["sample_input"] is None:
            raw["sample_input"] = _default_sample(raw["input"])
        if training_data is not None and raw["input"]["kind"] == "features":
            from ferry.observability.drift import training_stats

            names = [f["name"] for f in raw["input"]["features"]]
            raw["metadata"]["training_stats"] = training_stats(training_data, names)
        manifest = parse_manifest({k: v for k, v in raw.items() if v is not None}, source=f"{name}:{version}")
        write_manifest(staging, manifest)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(target)  # atomic: a half-written bundle is never visible
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _schema(schema: Any) -> dict[str, Any] | None:
    if schema is None:
        return None
    return schema if isinstance(schema, dict) else msgspec.to_builtins(schema)


def _features_schema(features: list[str] | None) -> dict[str, Any] | None:
    if not features:
        return None
    return {"kind": "features", "features": [{"name": f} for f in features]}


def _default_sample(schema: dict[str, Any]) -> Any:
    if schema["kind"] == "features":
        return {f["name"]: 0.0 for f in schema["features"]}
    return None


def _default_metadata(runtime: str) -> dict[str, Any]:
    libraries = {"numpy": importlib_metadata.version("numpy")}
    if runtime in _LIBRARIES:
        with contextlib.suppress(importlib_metadata.PackageNotFoundError):
            libraries[_LIBRARIES[runtime]] = importlib_metadata.version(_LIBRARIES[runtime])
    return {"created_at": datetime.now(UTC).isoformat(timespec="seconds"), "libraries": libraries}


Inferred = tuple[str, dict[str, Any] | None, dict[str, Any], list[str] | None]


def _write_artifacts(model: Any, staging: Path, options: dict[str, Any], trusted: bool) -> Inferred:
    """Save ``model`` in its safest format and infer what the manifest can from it."""
    if isinstance(model, str | Path):
        return _from_file(Path(model), staging, options, trusted)
    module = type(model).__module__
    if module.startswith("lightgbm"):
        return _lightgbm(model, staging)
    if module.startswith("sklearn") or hasattr(model, "get_params"):
        return _sklearn(model, staging, options)
    if hasattr(model, "predict"):
        return _python_class(model, staging, options)
    raise ManifestError(
        f"cannot bundle a {type(model).__name__}: expected an estimator, a Booster, an .onnx path "
        "or a class with predict()"
    )


def _sklearn(model: Any, staging: Path, options: dict[str, Any]) -> Inferred:
    import skops.io as sio

    path = staging / "model.skops"
    path.write_bytes(_reproducible_skops(sio.dumps(model)))
    options.setdefault("skops_trusted_types", sorted(sio.get_untrusted_types(file=path)))
    return ("sklearn", _sklearn_input(model), *_sklearn_output(model))


def _reproducible_skops(data: bytes) -> bytes:
    """The same model gives the same bytes, so a rebuilt bundle keeps its hash.

    skops numbers objects (and names array entries) after ``id()`` and stamps the current
    time; renumber the ids in order of appearance and fix the timestamps.
    """
    import io
    import re
    import zipfile

    source = zipfile.ZipFile(io.BytesIO(data))
    schema = source.read("schema.json").decode()
    ids: dict[str, str] = {}
    for found in re.findall(r'"__id__": (\d+)|"(\d+)\.npy"', schema):
        ids.setdefault(found[0] or found[1], str(len(ids)))
    schema = re.sub(r'("__id__": )(\d+)', lambda m: m.group(1) + ids[m.group(2)], schema)
    schema = re.sub(r'"(\d+)\.npy"', lambda m: f'"{ids[m.group(1)]}.npy"', schema)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as target:
        target.writestr(zipfile.ZipInfo("schema.json", (1980, 1, 1, 0, 0, 0)), schema)
        arrays = {
            f"{ids[i.filename.removesuffix('.npy')]}.npy": i for i in source.infolist() if i.filename != "schema.json"
        }
        for name in sorted(arrays):
            target.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), source.read(arrays[name]))
    return out.getvalue()


def _sklearn_input(model: Any) -> dict[str, Any] | None:
    names = getattr(model, "feature_names_in_", None)
    if names is not None:
        return {"kind": "features", "features": [{"name": str(n)} for n in names]}
    count = getattr(model, "n_features_in_", None)
    if count is not None:
        return {"kind": "features", "features": [{"name": f"f{i}"} for i in range(int(count))]}
    return None


def _sklearn_output(model: Any) -> tuple[dict[str, Any], list[str] | None]:
    classes = getattr(model, "classes_", None)
    if classes is None:
        return {"kind": "number"}, None
    return {"kind": "label", "dtype": "string"}, [str(c) for c in classes]


def _lightgbm(model: Any, staging: Path) -> Inferred:
    booster = getattr(model, "booster_", model)
    booster.save_model(str(staging / "model.txt"))
    names = booster.feature_name()
    schema = {"kind": "features", "features": [{"name": n} for n in names]}
    classes = getattr(model, "classes_", None)
    if classes is not None:
        return "lightgbm", schema, {"kind": "label", "dtype": "string"}, [str(c) for c in classes]
    return "lightgbm", schema, {"kind": "number"}, None


def _from_file(path: Path, staging: Path, options: dict[str, Any], trusted: bool) -> Inferred:
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        shutil.copy2(path, staging / "model.onnx")
        return ("onnx", _onnx_input(path), {"kind": "tensor", "dtype": "float32"}, None)
    if suffix == ".txt":
        import lightgbm

        return _lightgbm(lightgbm.Booster(model_file=str(path)), staging)
    if suffix == ".skops":
        import skops.io as sio

        return _sklearn(sio.load(path, trusted=sio.get_untrusted_types(file=path)), staging, options)
    if suffix in (".pkl", ".pickle", ".joblib"):
        if not trusted:
            raise ManifestError(
                f"{path.name} is a pickle, and unpickling runs arbitrary code; "
                "pass --trusted only if you trust its source"
            )
        import joblib

        model = joblib.load(path)
        shutil.copy2(path, staging / f"model{suffix}")
        options["artifact"] = f"model{suffix}"
        return ("sklearn", _sklearn_input(model), *_sklearn_output(model))
    raise ManifestError(f"{path.name}: unknown model file type (expected .onnx, .txt, .skops, .pkl or .joblib)")


def _onnx_input(path: Path) -> dict[str, Any]:
    import onnxruntime as ort

    first = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()[0]
    shape = [d if isinstance(d, int) else -1 for d in first.shape]
    dtype = {"tensor(double)": "float64", "tensor(int64)": "int64"}.get(first.type, "float32")
    return {"kind": "tensor", "tensors": [{"name": first.name, "dtype": dtype, "shape": shape}]}


def _python_class(model: Any, staging: Path, options: dict[str, Any]) -> Inferred:
    cls = model if inspect.isclass(model) else type(model)
    try:
        source = inspect.getsourcefile(cls)
    except TypeError:  # a class whose module is not in sys.modules: ask its own code where it lives
        source = getattr(getattr(getattr(cls, "predict", None), "__code__", None), "co_filename", None)
    if source is None:
        raise ManifestError(f"cannot find the source file of {cls.__name__}")
    shutil.copy2(source, staging / "model.py")
    options.setdefault("entrypoint", f"model.py:{cls.__name__}")
    return "python", None, {"kind": "tensor"}, None


__all__ = ["Feature", "build"]
