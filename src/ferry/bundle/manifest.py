"""The bundle manifest, ``ferry.yaml``: a typed schema, read and written as YAML, and read fast from its JSON twin.

``ferry.yaml`` is the source of truth. Beside it, ``ferry build`` writes ``ferry.yaml.json``: the same
document as JSON, which ``ferry serve`` decodes without importing PyYAML (about 8% of a compiled
server's start-up). The twin holds the SHA-256 of the YAML it stands for, and ferry.yaml's first line,
a comment, the SHA-256 of the twin: a twin is used only while both match, so a ferry.yaml edited by
hand is read as YAML, and the twin cannot differ from what ferry.yaml vouches for.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

import msgspec

from ferry.errors import ManifestError

MANIFEST_FILE = "ferry.yaml"
MANIFEST_TWIN = "ferry.yaml.json"
_TWIN_HEADER = f"# {MANIFEST_TWIN} sha256: "

FeatureDType = Literal["float64", "float32", "int64", "int32", "bool", "string", "category"]
InputKind = Literal["features", "tensor", "text", "image"]
OutputKind = Literal["label", "number", "tensor"]
RuntimeName = Literal["sklearn", "lightgbm", "onnx", "python", "xgboost", "catboost"]


class Feature(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """One named input feature of a tabular model.

    ``allow_nan``: a missing value (JSON ``null``, or NaN) is allowed. A ``category`` feature is a pandas
    categorical over ``categories`` (a LightGBM model fitted on one); a value outside them is missing, as in pandas:
    with no categories, a column the model never reads (one it drops), which takes any value.
    ``values``: the only values the model takes (an encoder fitted with ``handle_unknown='error'``); another is a 400.
    """

    name: str
    dtype: FeatureDType = "float64"
    allow_nan: bool = False
    categories: list[Any] | None = None
    values: list[Any] | None = None


class Tensor(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """One named input tensor; -1 in ``shape`` is a variable dimension (the first is the batch)."""

    name: str
    dtype: FeatureDType = "float64"
    shape: list[int] = msgspec.field(default_factory=lambda: [-1, -1])
    allow_nan: bool = False


class InputSchema(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """What the model takes: named features, tensors, text, or image bytes.

    ``field`` is the JSON key that carries a text or image input in a record. ``frame``: the model was
    fitted on a pandas DataFrame and is called with one, of the features in order with their dtypes.
    """

    kind: InputKind
    features: list[Feature] = msgspec.field(default_factory=list)
    tensors: list[Tensor] = msgspec.field(default_factory=list)
    field: str = "text"
    max_length: int | None = None
    frame: bool = False


class OutputSchema(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """What the model returns; ``min``/``max`` clip numeric predictions."""

    kind: OutputKind
    dtype: str = "float64"
    shape: list[int] = msgspec.field(default_factory=lambda: [-1])
    min: float | None = None
    max: float | None = None


class CompatInput(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Where a compatibility route finds its model input.

    - ``body``: the whole JSON body is the native predict body;
    - ``body_key``: the value under ``key`` in the JSON body is the native predict body;
    - ``query``: query parameters, renamed to features by ``names`` (param -> feature).
    """

    source: Literal["body", "body_key", "query"] = "body"
    key: str | None = None
    names: dict[str, str] = msgspec.field(default_factory=dict)


class CompatRoute(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A route that reproduces a hand-written API, declared as data.

    ``action`` is ``predict``, ``health``, ``labels``, ``metadata`` (data and prediction type and
    structure) or ``predict_test`` (the bundle's sample input); ``response_key`` wraps the answer
    in an object under that key, and ``None`` returns the bare value.
    """

    method: Literal["GET", "POST"]
    path: str
    action: Literal["predict", "health", "labels", "metadata", "predict_test"] = "predict"
    input: CompatInput = msgspec.field(default_factory=CompatInput)
    response_key: str | None = "prediction"


class Batching(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Adaptive batching; ``enabled`` defaults to on for row-wise runtimes, off for Python classes."""

    enabled: bool | None = None
    max_batch_size: int = 256
    max_wait_ms: float = 0.0


class Limits(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Per-model admission bounds; ``None`` takes the server's setting."""

    timeout_s: float | None = None
    max_queue: int | None = None


class PredictionLogSpec(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Opt-in prediction logging: a ``sample_rate`` share of predictions is written to the server's
    prediction log (``ferry serve --prediction-log``), with the input fields named in ``redact`` masked."""

    sample_rate: float = 1.0
    redact: list[str] = msgspec.field(default_factory=list)


class Manifest(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Everything Ferry needs to load, check and serve one model version."""

    name: str
    version: str
    runtime: RuntimeName
    input: InputSchema
    output: OutputSchema
    artifacts: dict[str, str]
    labels: list[str] | None = None
    sample_input: Any = None
    # What the native predict route answers for ``sample_input``: checked at build, warm-up and ``ferry check``.
    expected_output: Any = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    options: dict[str, Any] = msgspec.field(default_factory=dict)
    routes: list[CompatRoute] = msgspec.field(default_factory=list)
    batching: Batching = msgspec.field(default_factory=Batching)
    limits: Limits = msgspec.field(default_factory=Limits)
    prediction_log: PredictionLogSpec | None = None
    trusted: bool = False
    format_version: int = 1


# Bound on what ferry.yaml (and its twin) may cost to read; ``ferry.bundle.yamltext`` bounds the values
# YAML aliases expand to.
MAX_MANIFEST_BYTES = 1 << 20


class _Twin(msgspec.Struct, forbid_unknown_fields=True):
    yaml_sha256: str  # of the YAML document it stands for: ferry.yaml without its first line
    manifest: dict[str, Any]


_TWIN_DECODER = msgspec.json.Decoder(_Twin)


def parse_route(text: str) -> dict[str, Any]:
    """A route from the command line: ``'POST /predict'``, or a YAML mapping in the full form."""
    text = text.strip()
    if text.startswith("{"):
        from ferry.bundle import yamltext

        try:
            route = yamltext.load(text)
        except yamltext.YAMLError as exc:
            raise ManifestError(f"--route {text!r}: not a valid YAML mapping: {exc}") from None
        if not isinstance(route, dict):
            raise ManifestError(f"--route {text!r}: expected a mapping such as {{method: POST, path: /score}}")
        return route
    method, _, path = text.partition(" ")
    if method.upper() not in ("GET", "POST") or not path.strip().startswith("/"):
        raise ManifestError(f"--route {text!r}: expected 'POST /path' (or GET), or a YAML mapping")
    return {"method": method.upper(), "path": path.strip()}


UNSERVABLE_FILE = "unservable.txt"  # in place of a manifest: why Ferry could not build this version


def bundle_label(bundle_dir: Path) -> str:
    """``name/version``: how errors that a client or a probe may read name a bundle, without server paths."""
    return f"{bundle_dir.parent.name}/{bundle_dir.name}"


def unservable_reason(bundle_dir: Path) -> str | None:
    """Why the version in ``bundle_dir`` cannot be served, when it was recorded so; None for a bundle."""
    path = bundle_dir / UNSERVABLE_FILE
    if path.is_file() and not (bundle_dir / MANIFEST_FILE).is_file():
        return path.read_text(encoding="utf-8").strip()
    return None


def read_manifest(bundle_dir: Path) -> Manifest:
    """Read and validate ``ferry.yaml``; errors name the bundle (``name/version``), the file and the field."""
    source = f"{bundle_label(bundle_dir)}/{MANIFEST_FILE}"
    path = bundle_dir / MANIFEST_FILE
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise ManifestError(f"{source}: not a regular file in the bundle folder")
    try:
        with path.open("rb") as fh:
            text = fh.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise ManifestError(  # a version Ferry could not build says why
            unservable_reason(bundle_dir) or f"{source}: no {MANIFEST_FILE} in the bundle folder"
        ) from None
    if len(text) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{source}: larger than the limit of {MAX_MANIFEST_BYTES} bytes")
    raw = _read_twin(bundle_dir, text)
    if raw is None:
        raw = _parse_yaml(text, source)
    return parse_manifest(raw, source=source)


def _parse_yaml(text: bytes, source: str) -> Any:
    from ferry.bundle import yamltext

    try:
        return yamltext.load(text)
    except yamltext.YAMLError as exc:
        raise ManifestError(f"{source}: not valid YAML: {exc}") from None
    except RecursionError:
        raise ManifestError(f"{source}: nested too deeply") from None


def _read_twin(bundle_dir: Path, text: bytes) -> Any:
    """The manifest from ``ferry.yaml.json`` when ferry.yaml vouches for it and it stands for ferry.yaml; else None."""
    first, newline, body = text.partition(b"\n")
    if not newline or not first.startswith(_TWIN_HEADER.encode()):
        return None
    path = bundle_dir / MANIFEST_TWIN
    try:
        if path.is_symlink():
            return None
        with path.open("rb") as fh:
            data = fh.read(2 * MAX_MANIFEST_BYTES + 1)
    except OSError:
        return None
    if first[len(_TWIN_HEADER) :].decode("ascii", "replace") != _sha256(data):
        return None
    try:
        twin = _TWIN_DECODER.decode(data)
    except msgspec.DecodeError:
        return None
    return twin.manifest if twin.yaml_sha256 == _sha256(body) else None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse_manifest(raw: Any, source: str = MANIFEST_FILE) -> Manifest:
    try:
        manifest = msgspec.convert(raw, Manifest)
    except msgspec.ValidationError as exc:
        raise ManifestError(f"{source}: {exc}") from None
    _check_consistency(manifest, source)
    return manifest


def check_folder_names(name: str, version: str, source: str) -> None:
    """Name and version each become a folder name in a repository: one plain path component, never a way out."""
    for field, value in (("name", name), ("version", version)):
        if not value or value in (".", "..") or any(c in value for c in "/\\\0"):
            raise ManifestError(f"{source}: {field} {value[:100]!r} is not a plain folder name - at `$.{field}`")


def _check_consistency(m: Manifest, source: str) -> None:
    check_folder_names(m.name, m.version, source)
    if m.input.kind == "features" and not m.input.features:
        raise ManifestError(f"{source}: input.kind is 'features' but input.features is empty - at `$.input.features`")
    if m.input.kind == "tensor" and len(m.input.tensors) != 1:
        raise ManifestError(f"{source}: input.kind 'tensor' needs exactly one tensor - at `$.input.tensors`")
    names = [f.name for f in m.input.features]
    if len(set(names)) != len(names):
        raise ManifestError(f"{source}: duplicate feature names - at `$.input.features`")
    for i, feature in enumerate(m.input.features):
        if (feature.dtype == "category") != (feature.categories is not None):
            raise ManifestError(
                f"{source}: feature '{feature.name}': categories go with dtype 'category', and only with it"
                f" - at `$.input.features[{i}]`"
            )
    if m.output.kind == "label" and not m.labels:
        raise ManifestError(f"{source}: output.kind 'label' needs labels - at `$.labels`")
    if m.prediction_log is not None and not 0.0 <= m.prediction_log.sample_rate <= 1.0:
        raise ManifestError(f"{source}: sample_rate must be within [0, 1] - at `$.prediction_log.sample_rate`")
    if not m.artifacts:
        raise ManifestError(f"{source}: no artifacts listed - at `$.artifacts`")


def write_manifest(bundle_dir: Path, manifest: Manifest) -> Path:
    """Write ``ferry.yaml``, and its JSON twin where JSON carries the document exactly (not a NaN, say)."""
    from ferry.bundle import yamltext

    path, twin_path = bundle_dir / MANIFEST_FILE, bundle_dir / MANIFEST_TWIN
    data = msgspec.to_builtins(manifest)
    body = yamltext.dump(data)
    twin = msgspec.json.encode(_Twin(_sha256(body.encode("utf-8")), data))
    if yamltext.load(body) == data and _TWIN_DECODER.decode(twin).manifest == data:
        twin_path.write_bytes(twin)
        body = f"{_TWIN_HEADER}{_sha256(twin)}\n{body}"
    else:
        twin_path.unlink(missing_ok=True)
    path.write_text(body, encoding="utf-8")
    return path
