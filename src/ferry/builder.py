"""Build a bundle folder from a fitted model: artifacts, their hashes, and ``ferry.yaml``.

``ferry.build``. Above the protocol codecs: ``--expect`` is checked by answering the staged bundle's
sample input as the native predict route will.
"""

from __future__ import annotations

import contextlib
import inspect
import shutil
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import msgspec

from ferry.bundle import columns as model_columns
from ferry.bundle.artifacts import links_leading_out
from ferry.bundle.files import check_step, file_kind, read_estimator
from ferry.bundle.hashing import sha256_file
from ferry.bundle.manifest import (
    MANIFEST_FILE,
    CompatRoute,
    Feature,
    InputSchema,
    Manifest,
    OutputSchema,
    check_folder_names,
    parse_manifest,
    parse_route,
    write_manifest,
)
from ferry.bundle.mlflow import is_mlflow_folder, pyfunc_flavor, read_mlflow, write_pyfunc
from ferry.bundle.repository import next_version
from ferry.bundle.trust import BUILD_FLAG, Trust
from ferry.errors import FerryError, ManifestError
from ferry.runtimes.compile import compile_model, load_original

PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib")
REQUIREMENTS_FILE = "requirements.txt"
_LIBRARIES = {
    "sklearn": "scikit-learn",
    "lightgbm": "lightgbm",
    "onnx": "onnxruntime",
    "xgboost": "xgboost",
    "catboost": "catboost",
}


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
    expected_output: Any = None,
    metadata: dict[str, Any] | None = None,
    routes: Sequence[CompatRoute | dict[str, Any] | str] | None = None,
    options: dict[str, Any] | None = None,
    trusted: bool = False,
    training_data: Any = None,
    include: Sequence[str | Path] = (),
    requirements: str | Path | None = None,
    compile: bool = True,
) -> Path:
    """Write ``repo/name/version/`` and return its path.

    ``model`` is a fitted scikit-learn estimator or pipeline, a LightGBM model, a model file
    (skops, pickle/joblib, LightGBM text, ONNX), a list of files composed in order into one
    pipeline, or a Python class (or instance) with ``predict(batch)``, or ``"module.py:Class"``
    (imported, with its folder on the path, once the options are checked).
    ``expected_output`` is what ``sample_input`` must answer, checked here through the built bundle
    exactly as the server will run it, and again at every warm-up and by ``ferry check``.
    ``include`` (files or folders) ships with a Python class, importable from it and hashed like
    every artifact; ``requirements`` (a pip requirements file) is kept for ``ferry containerize``.
    ``training_data`` (rows in feature order), for a feature model, adds per-feature statistics
    to the metadata, against which ``ferry monitor`` measures drift, and keeps a few of its rows as the
    background of sampled explanations (``ferry.runtimes.sampled``). ``compile`` adds the model's
    verified numpy form where it has one (``ferry.runtimes.compile``), which serves without the framework.
    """
    repo = Path(repo)
    version = version or next_version(repo, name)
    check_folder_names(name, version, source=f"{name}:{version}")
    target = repo / name / version
    if target.exists():
        raise ManifestError(f"{target} already exists; bundles are immutable, pick a new version")
    parsed_routes = [_route(r) for r in routes or []]
    _check_options(model, name, version, features, input_schema, sample_input, expected_output, include, requirements)
    options = dict(options or {})
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=_mkdir(repo)))
    staging.chmod(0o755)  # mkdtemp makes it private; a bundle is read by other users (a container's, say)
    try:
        runtime, inferred_input, inferred_output, inferred_labels = _write_artifacts(model, staging, options, trusted)
        if include:
            _check_include_runtime(name, runtime)  # a model object given in Python: known only now
            _include(include, staging)
        if requirements:
            shutil.copy2(requirements, staging / REQUIREMENTS_FILE)
            options["requirements"] = REQUIREMENTS_FILE
        if runtime == "python":
            trusted = True  # the builder hands over its own code
        declared = _features_schema(features, f"{name}:{version}")
        _check_against_model(f"{name}:{version}", declared, inferred_input, labels, inferred_labels)
        if labels and runtime == "onnx" and output_schema is None:  # a classifier graph's classes, or a tensor's
            from ferry.bundle.onnxfiles import onnx_labelled

            inferred_output = onnx_labelled(staging, options, inferred_output, len(labels))
        if labels and inferred_output.get("kind") == "label":
            inferred_output = {**inferred_output, "dtype": "string"}  # --labels names the classes, as text
        labels = [str(label) for label in labels] if labels else inferred_labels  # numpy.str_ too
        compiled = None
        if compile and runtime in ("sklearn", "lightgbm", "xgboost", "catboost"):
            # An object given in Python is the builder's own (as its class is); a file, only as --trusted says.
            original = load_original(staging, runtime, options, trusted or not _from_disk(model))
            compiled = compile_model(original, runtime, staging, options, labels)
        if training_data is not None:  # rows an operator's --explain-sampled explains against
            from ferry.runtimes.sampled import write_background

            write_background(staging, training_data)
        raw: dict[str, Any] = {
            "name": name,
            "version": version,
            "runtime": runtime,
            "input": _schema(input_schema) or _input_schema(name, declared, inferred_input, sample_input),
            "output": _schema(output_schema) or inferred_output,
            "labels": labels,
            "sample_input": sample_input,
            "expected_output": expected_output,
            "metadata": {
                **_default_metadata(runtime),
                **({"compiled": compiled} if compiled else {}),
                **(metadata or {}),
            },
            "options": options,
            "routes": parsed_routes,
            "trusted": trusted,
            "artifacts": _artifacts(staging),
        }
        if raw["input"] is None:
            raise ManifestError(f"{name}: cannot infer the input schema; pass --features (features= in Python)")
        if raw["sample_input"] is None:
            raw["sample_input"] = _default_sample(raw["input"])
        raw["input"] = _without_examples(raw["input"])
        if training_data is not None and raw["input"]["kind"] == "features":
            from ferry.observability.drift import training_stats

            names = [f["name"] for f in raw["input"]["features"]]
            raw["metadata"]["training_stats"] = training_stats(training_data, names)
        manifest = parse_manifest({k: v for k, v in raw.items() if v is not None}, source=f"{name}:{version}")
        write_manifest(staging, manifest)
        if runtime == "python":  # its files are next to its __file__; its input_format fits the input
            _check_class(staging, manifest)
        if manifest.sample_input is not None:  # "built" means "it serves": always, not only with --expect
            _check_sample(staging, manifest, trusted)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            staging.rename(target)  # atomic: a half-written bundle is never visible
        except OSError:
            if not target.exists():
                raise
            raise ManifestError(  # another build wrote it meanwhile: bundles are immutable, that one stands
                f"{target} was written by another build at the same time; bundles are immutable, build again for the "
                "next version"
            ) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _check_options(
    model: Any,
    name: str,
    version: str,
    features: list[str] | None,
    input_schema: Any,
    sample_input: Any,
    expected_output: Any,
    include: Sequence[str | Path],
    requirements: str | Path | None,
) -> None:
    """Every check that needs no model, made before the model is read: a mistake in an option fails at
    once, and never after a pickle was unpickled (which runs its code) or a large model was loaded."""
    if input_schema is None and features and len(set(features)) != len(features):
        raise ManifestError(f"{name}:{version}: duplicate feature names - at `$.input.features`")
    if sample_input is None and expected_output is not None:
        raise ManifestError(f"{name}: --expect needs --sample (the input whose answer is expected)")
    if requirements and not Path(requirements).is_file():
        raise ManifestError(f"--requirements {requirements}: no such file")
    for given in include:
        if not Path(given).exists():
            raise ManifestError(f"--include {given}: no such file or folder")
        if Path(given).name == MANIFEST_FILE:
            raise ManifestError(f"--include {given}: the bundle already holds a file named {MANIFEST_FILE}")
        escaping = links_leading_out(Path(given)) if Path(given).is_dir() else []
        if escaping:  # copied, it would bring a file from elsewhere into the bundle, as the loader refuses
            raise ManifestError(f"--include {given}: '{escaping[0]}' is a link that leads out of the folder")
    if include:
        _check_include_runtime(name, _file_runtime(model))


def _check_against_model(
    source: str,
    declared: dict[str, Any] | None,
    inferred: dict[str, Any] | None,
    labels: list[str] | None,
    inferred_labels: list[str] | None,
) -> None:
    """Declared features and labels must fit the model itself: a mismatch would only fail, or mislabel, when served."""
    if declared is not None and inferred is not None and inferred.get("kind") == "features":
        want, got = len(inferred["features"]), len(declared["features"])
        if want != got:
            raise ManifestError(f"{source}: {got} feature names for a model fitted on {want} - at `$.input.features`")
    if labels and inferred_labels and len(labels) != len(inferred_labels):
        raise ManifestError(
            f"{source}: {len(labels)} labels for a classifier of {len(inferred_labels)} classes - at `$.labels`"
        )


def _check_include_runtime(name: str, runtime: str | None) -> None:
    if runtime not in (None, "python"):
        raise ManifestError(f"{name}: --include ships files with a Python class; a {runtime} model needs none")


def _file_runtime(model: Any) -> str | None:
    """The runtime of model file(s), from their content alone; None for anything else (an object, MLflow)."""
    files = model if isinstance(model, list | tuple) else [model]
    if not files or not all(isinstance(f, str | Path) for f in files):
        return None
    if len(files) == 1 and _class_spec(files[0]):
        return "python"
    if len(files) == 1 and is_mlflow_folder(Path(files[0])):
        return None  # its flavour is read with the model
    kinds = {file_kind(Path(f)) for f in files}
    if len(files) > 1:  # skops and pickle files compose into an sklearn pipeline; the build refuses others
        return "sklearn" if kinds <= {"skops", "pickle"} else None
    kind = kinds.pop()
    return kind if kind in ("onnx", "lightgbm", "xgboost", "catboost") else "sklearn"


def _from_disk(model: Any) -> bool:
    """A model file, several, or a folder (MLflow), rather than an object or class given in Python."""
    files = model if isinstance(model, list | tuple) else [model]
    return bool(files) and all(isinstance(f, str | Path) for f in files)


def _route(route: CompatRoute | dict[str, Any] | str) -> Any:
    if isinstance(route, str):
        return parse_route(route)
    return msgspec.to_builtins(route) if isinstance(route, CompatRoute) else route


def _check_sample(staging: Path, manifest: Manifest, trusted: bool) -> None:
    """Load the staged bundle as the server does and warm it up as the server does: the sample input decoded,
    the model called with its outputs clipped, the answer encoded and compared with ``expected_output``."""
    from ferry.errors import ModelWarmupFailed
    from ferry.protocol.native import native_warm_up
    from ferry.runtimes.load import load_bundle
    from ferry.serving.inputs import InputCodec
    from ferry.serving.registry import ModelHandle

    try:
        loaded = load_bundle(staging, trust_pickle=trusted, trust_code=trusted)  # the builder's own files
    except FerryError as exc:
        raise ManifestError(f"{manifest.name}: the built bundle does not load: {exc.message}") from None
    handle = ModelHandle(manifest.name, manifest.version, staging, model=loaded, codec=InputCodec(manifest.input))
    try:
        native_warm_up()(handle)
    except ModelWarmupFailed as exc:
        raise ManifestError(f"{manifest.name}: {exc.message}") from None


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _schema(schema: Any) -> dict[str, Any] | None:
    if schema is None:
        return None
    return schema if isinstance(schema, dict) else msgspec.to_builtins(schema)


def _features_schema(features: list[str] | None, source: str = "--features") -> dict[str, Any] | None:
    """``--features a,b`` or, with types, ``--features sex:string,age:int,fare:float``."""
    if not features:
        return None
    try:
        return {"kind": "features", "features": [model_columns.declared(f) for f in features]}
    except ValueError as exc:
        raise ManifestError(f"{source}: {exc}") from None


def _input_schema(
    name: str, declared: dict[str, Any] | None, inferred: dict[str, Any] | None, sample: Any
) -> dict[str, Any] | None:
    """The input schema: the model's own (a DataFrame's columns, with --features' types over them), else --features.

    A column whose type the model does not tell is typed by the --sample row, else by --features name:type;
    failing both, the build fails naming the column and the options that say it.
    """
    if inferred is None or not inferred.get("frame"):
        return declared or inferred
    features = [dict(f) for f in inferred["features"]]
    if declared is not None:
        given = {f["name"]: f for f in declared["features"]}
        fitted = [f["name"] for f in features]
        if set(given) != set(fitted):
            raise ManifestError(
                f"{name}: --features names {', '.join(given)}, but the model was fitted on the columns "
                f"{', '.join(fitted)} - at `$.input.features`"
            )
        for feature in features:
            feature.update({k: v for k, v in given[feature["name"]].items() if k != "name"})
    record = sample if isinstance(sample, dict) else {}
    for feature in features:
        if feature.get("dtype") is None:
            typed = model_columns.from_sample(feature["name"], record.get(feature["name"]))
            if typed is None:
                raise ManifestError(
                    f"{name}: the model does not tell the type of column '{feature['name']}'; say it with "
                    f"--features {feature['name']}:TYPE (string, int, float, bool) or give a --sample row"
                )
            feature.update(typed)
    return {**inferred, "features": features}


def _default_sample(schema: dict[str, Any]) -> Any:
    """A record of valid values: each column's first category where the model has them, else zero."""
    if schema["kind"] == "features":
        zero = {"string": "", "bool": False, "int64": 0, "int32": 0}
        return {f["name"]: f.get("example", zero.get(f.get("dtype", "float64"), 0.0)) for f in schema["features"]}
    return None


def _without_examples(schema: dict[str, Any] | None) -> dict[str, Any] | None:
    if schema is None or "features" not in schema:
        return schema
    return {**schema, "features": [{k: v for k, v in f.items() if k != "example"} for f in schema["features"]]}


def _default_metadata(runtime: str) -> dict[str, Any]:
    libraries = {"numpy": importlib_metadata.version("numpy")}
    if runtime in _LIBRARIES:
        with contextlib.suppress(importlib_metadata.PackageNotFoundError):
            libraries[_LIBRARIES[runtime]] = importlib_metadata.version(_LIBRARIES[runtime])
    return {"created_at": datetime.now(UTC).isoformat(timespec="seconds"), "libraries": libraries}


Inferred = tuple[str, dict[str, Any] | None, dict[str, Any], list[str] | None]


def _write_artifacts(model: Any, staging: Path, options: dict[str, Any], trusted: bool) -> Inferred:
    """Save ``model`` in its safest format and infer what the manifest can from it."""
    if isinstance(model, list | tuple) and len(model) == 1 and isinstance(model[0], str | Path):
        model = model[0]
    if _class_spec(model):
        return _python_class(_import_class(model), staging, options)
    if isinstance(model, str | Path) and is_mlflow_folder(Path(model)):
        if pyfunc_flavor(Path(model)) is not None:  # Python code: a class bundle over the folder, on --trusted
            return write_pyfunc(Path(model), staging, options, Trust(trusted, BUILD_FLAG))
        fitted, signature_schema = read_mlflow(Path(model), trusted)
        runtime, inferred, output, labels = _write_artifacts(fitted, staging, options, trusted)
        return runtime, _with_signature(signature_schema, inferred), output, labels
    if isinstance(model, list | tuple) and all(isinstance(m, str | Path) for m in model):
        if len(model) == 1:
            return _from_file(Path(model[0]), staging, options, trusted)
        return _from_files([Path(m) for m in model], staging, options, trusted)
    if isinstance(model, str | Path):
        return _from_file(Path(model), staging, options, trusted)
    module = type(model).__module__
    if module.startswith(("xgboost", "catboost")):
        from ferry.bundle.boosters import booster_object

        return booster_object(model, staging)
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


def _with_signature(signature: dict[str, Any] | None, inferred: dict[str, Any] | None) -> dict[str, Any] | None:
    """An MLflow signature's column types, over what the model itself says (its DataFrame, its categories)."""
    if signature is None or inferred is None or not inferred.get("frame"):
        return signature or inferred
    typed = {f["name"]: f for f in signature["features"]}
    if set(typed) != {f["name"] for f in inferred["features"]}:
        return signature
    features = []
    for feature in inferred["features"]:
        merged = {**feature, **typed[feature["name"]]}
        if merged.get("dtype") != feature.get("dtype"):
            merged.pop("example", None)  # the model's example value is of another type
        features.append(merged)
    return {**inferred, "features": features}


def _sklearn(model: Any, staging: Path, options: dict[str, Any]) -> Inferred:
    import skops.io as sio

    path = staging / "model.skops"
    path.write_bytes(_reproducible_skops(sio.dumps(model)))
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
    fitted = model_columns.sklearn_columns(model)
    if fitted is not None:  # fitted on a DataFrame: called with one, each column typed as the model reads it
        names = [str(n) for n in model.feature_names_in_]
        features = [c if c is not None else {"name": n, "dtype": None} for c, n in zip(fitted, names, strict=True)]
        return {"kind": "features", "frame": True, "features": features}
    count = getattr(model, "n_features_in_", None)
    if count is not None:
        return {"kind": "features", "features": [{"name": f"f{i}"} for i in range(int(count))]}
    return None


def _sklearn_output(model: Any) -> tuple[dict[str, Any], list[str] | None]:
    classes = getattr(model, "classes_", None)
    if classes is None:
        return {"kind": "number"}, None
    return _label_output(classes)


def _label_output(classes: Any) -> tuple[dict[str, Any], list[str]]:
    """A classifier's classes as labels; integer, boolean and float classes keep their type (``output.dtype``;
    float classes are ``float``, since a label bundle without a dtype, written before types were kept, is text)."""
    import numpy as np

    kind = np.asarray(classes).dtype.kind
    dtype = "int64" if kind in "iu" else "bool" if kind == "b" else "float" if kind == "f" else "string"
    return {"kind": "label", "dtype": dtype}, [str(c) for c in classes]


def _lightgbm(model: Any, staging: Path) -> Inferred:
    booster = getattr(model, "booster_", model)
    booster.save_model(str(staging / "model.txt"))
    names = booster.feature_name()
    # LightGBM takes a missing value (null, NaN) in any feature, as its trees were fitted to route it.
    schema: dict[str, Any] = {"kind": "features", "features": [{"name": n, "allow_nan": True} for n in names]}
    categorical = model_columns.lightgbm_columns(booster)
    if categorical is not None:  # fitted on a DataFrame with pandas categoricals: called with one
        schema = {"kind": "features", "frame": True, "features": categorical}
    classes = getattr(model, "classes_", None)
    if classes is not None:
        return ("lightgbm", schema, *_label_output(classes))
    per_row = booster.num_model_per_iteration()  # a multiclass Booster answers one probability per class
    return "lightgbm", schema, {"kind": "number", **({"shape": [-1, per_row]} if per_row > 1 else {})}, None


def _from_file(path: Path, staging: Path, options: dict[str, Any], trusted: bool) -> Inferred:
    kind = file_kind(path)
    if kind == "onnx":  # a classifier keeps its labels, probabilities and output names
        from ferry.bundle.onnxfiles import onnx_file

        return onnx_file(path, staging, options)
    if kind in ("xgboost", "catboost"):  # their own formats, which run no code as they load
        from ferry.bundle.boosters import booster_file

        return booster_file(path, kind, staging)
    if kind == "lightgbm":  # checked before LightGBM reads it: a malformed file aborts or hangs LightGBM
        from ferry.runtimes.lightgbm_check import read_booster

        return _lightgbm(read_booster(path), staging)
    _, model = read_estimator(path, trusted)
    check_step(model, path, last=True)
    if kind == "skops":
        return _sklearn(model, staging, options)
    suffix = path.suffix.lower() if path.suffix.lower() in PICKLE_SUFFIXES else ".pkl"
    shutil.copy2(path, staging / f"model{suffix}")
    options["artifact"] = f"model{suffix}"
    return ("sklearn", _sklearn_input(model), *_sklearn_output(model))


def _from_files(paths: list[Path], staging: Path, options: dict[str, Any], trusted: bool) -> Inferred:
    """Several files, in order, composed into one pipeline; each file is kept as it was saved."""
    steps, names = [], []
    for i, path in enumerate(paths, start=1):
        kind, obj = read_estimator(path, trusted)
        check_step(obj, path, last=i == len(paths))
        name = f"step-{i}.skops" if kind == "skops" else f"step-{i}.pkl"
        shutil.copy2(path, staging / name)
        steps.append(obj)
        names.append(name)
    options["steps"] = names
    options["sources"] = [p.name for p in paths]
    return ("sklearn", _sklearn_input(steps[0]), *_sklearn_output(steps[-1]))


def _class_spec(model: Any) -> bool:
    """``module.py:Class``, as ``ferry build`` takes a Python class from the command line."""
    return isinstance(model, str) and ".py:" in model


def _import_class(spec: str) -> Any:
    """``module.py:Class``, imported with its own folder on the path, as ``python module.py`` would."""
    import importlib.util
    import sys

    filename, _, class_name = spec.partition(":")
    path = Path(filename).resolve()
    if not path.is_file():
        raise ManifestError(f"{filename}: no such file")
    module_spec = importlib.util.spec_from_file_location(path.stem, path)
    if module_spec is None or module_spec.loader is None:
        raise ManifestError(f"cannot import {filename}")
    module = importlib.util.module_from_spec(module_spec)
    sys.path.insert(0, str(path.parent))
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        raise ManifestError(f"importing {filename} failed: {type(exc).__name__}: {exc}") from None
    finally:
        sys.path.remove(str(path.parent))
    if not hasattr(module, class_name):
        raise ManifestError(f"{filename} defines no '{class_name}'")
    return getattr(module, class_name)


def _python_class(model: Any, staging: Path, options: dict[str, Any]) -> Inferred:
    cls = model if inspect.isclass(model) else type(model)
    state = sorted(vars(model)) if not inspect.isclass(model) and hasattr(model, "__dict__") else []
    if state:  # the bundle carries the class's source, not this object: its state would be lost
        raise ManifestError(
            f"{cls.__name__} instance has state ({', '.join(state)}) that a bundle cannot carry: "
            "Ferry builds the class from its source, as `Class()`. Pass the class and set the state "
            "in its __init__ defaults or load() (reading a file shipped with --include)"
        )
    try:
        source = inspect.getsourcefile(cls)
    except TypeError:  # a class whose module is not in sys.modules: ask its own code where it lives
        source = getattr(getattr(getattr(cls, "predict", None), "__code__", None), "co_filename", None)
    if source is None:
        raise ManifestError(f"cannot find the source file of {cls.__name__}")
    # Under its own name, so the files it ships with (--include) can import it as they do at home.
    shutil.copy2(source, staging / Path(source).name)
    options.setdefault("entrypoint", f"{Path(source).name}:{cls.__name__}")
    return "python", _ANY_ROWS, {"kind": "tensor"}, None


def _include(paths: Sequence[str | Path], staging: Path) -> None:
    """Copy a class's neighbours (files or folders) into the bundle, under their own names."""
    for given in paths:
        path = Path(given)
        target = staging / path.name
        if target.exists():  # a model artifact of that name (a missing path was refused before the build)
            raise ManifestError(f"--include {given}: the bundle already holds a file named {path.name}")
        if path.is_dir():
            shutil.copytree(path, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))
        else:
            shutil.copy2(path, target)


def _artifacts(staging: Path) -> dict[str, str]:
    """Every file in the bundle, folders included, by its path inside the bundle: all hashed."""
    files = sorted(p for p in staging.rglob("*") if p.is_file())
    return {p.relative_to(staging).as_posix(): sha256_file(p) for p in files}


# A class takes rows of numbers of any width unless the builder declares its features.
_ANY_ROWS = {"kind": "tensor", "tensors": [{"name": "input", "dtype": "float64", "shape": [-1, -1]}]}


__all__ = ["Feature", "build"]


def _check_class(bundle: Path, manifest: Manifest) -> None:
    """Warn for each relative path the class's files open, and, where no sample will load it, load the class
    once, so that an ``input_format`` the input cannot give fails the build rather than the server."""
    from ferry.bundle.classfiles import warn_relative_paths
    from ferry.runtimes.load import load_bundle

    warn_relative_paths(bundle)
    if manifest.sample_input is None:
        try:
            load_bundle(bundle, trust_code=True)  # the builder's own class
        except FerryError as exc:
            raise ManifestError(f"{manifest.name}: the built bundle does not load: {exc.message}") from None
