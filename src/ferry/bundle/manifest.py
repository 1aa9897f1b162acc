"""The bundle manifest, ``ferry.yaml``: a typed schema, read and written as YAML."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import msgspec
import yaml

from ferry.bundle.artifacts import bundle_label
from ferry.errors import ManifestError

MANIFEST_FILE = "ferry.yaml"

FeatureDType = Literal["float64", "float32", "int64", "int32", "bool", "string"]
InputKind = Literal["features", "tensor", "text", "image"]
OutputKind = Literal["label", "number", "tensor"]
RuntimeName = Literal["sklearn", "lightgbm", "onnx", "python"]


class Feature(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """One named input feature of a tabular model."""

    name: str
    dtype: FeatureDType = "float64"
    allow_nan: bool = False


class Tensor(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """One named input tensor; -1 in ``shape`` is a variable dimension (the first is the batch)."""

    name: str
    dtype: FeatureDType = "float64"
    shape: list[int] = msgspec.field(default_factory=lambda: [-1, -1])
    allow_nan: bool = False


class InputSchema(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """What the model takes: named features, tensors, text, or image bytes.

    ``field`` is the JSON key that carries a text or image input in a record.
    """

    kind: InputKind
    features: list[Feature] = msgspec.field(default_factory=list)
    tensors: list[Tensor] = msgspec.field(default_factory=list)
    field: str = "text"
    max_length: int | None = None


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


# Bounds on what ferry.yaml may cost to read: its bytes, and the values it expands to once YAML
# aliases are followed (an alias bomb is a few lines that expand to billions of values).
MAX_MANIFEST_BYTES = 1 << 20
MAX_MANIFEST_VALUES = 1_000_000


def parse_route(text: str) -> dict[str, Any]:
    """A route from the command line: ``'POST /predict'``, or a YAML mapping in the full form."""
    text = text.strip()
    if text.startswith("{"):
        try:
            route = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ManifestError(f"--route {text!r}: not a valid YAML mapping: {exc}") from None
        if not isinstance(route, dict):
            raise ManifestError(f"--route {text!r}: expected a mapping such as {{method: POST, path: /score}}")
        return route
    method, _, path = text.partition(" ")
    if method.upper() not in ("GET", "POST") or not path.strip().startswith("/"):
        raise ManifestError(f"--route {text!r}: expected 'POST /path' (or GET), or a YAML mapping")
    return {"method": method.upper(), "path": path.strip()}


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
        raise ManifestError(f"{source}: no {MANIFEST_FILE} in the bundle folder") from None
    if len(text) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{source}: larger than the limit of {MAX_MANIFEST_BYTES} bytes")
    # Only an alias (``*name``) can expand a document past its own size, and every encoding YAML reads
    # spells ``*`` with the byte 0x2A: without one, counting the values is not needed.
    loader = _BoundedLoader if b"*" in text else _SafeLoader
    try:
        raw = yaml.load(text, Loader=loader)
    except yaml.YAMLError as exc:
        raise ManifestError(f"{source}: not valid YAML: {exc}") from None
    except RecursionError:
        raise ManifestError(f"{source}: nested too deeply") from None
    return parse_manifest(raw, source=source)


# libyaml's parser where PyYAML has it: ten times faster, which a repository of a thousand bundles verified
# at start-up (``--max-memory``) needs.
_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _BoundedLoader(_SafeLoader):  # type: ignore[valid-type,misc]
    """PyYAML's safe loader, refusing a document whose aliases expand past ``MAX_MANIFEST_VALUES``.

    The node graph is composed without expanding aliases; it is counted before anything is constructed.
    """

    def get_single_node(self) -> yaml.Node | None:
        node: yaml.Node | None = super().get_single_node()
        if node is not None:
            _count_values(node, {}, set())
        return node


def _count_values(node: yaml.Node, counted: dict[int, int], open_nodes: set[int]) -> int:
    """How many values ``node`` expands to, each shared (aliased) node counted once per use but walked once."""
    key = id(node)
    if key in counted:
        return counted[key]
    if key in open_nodes:
        raise yaml.YAMLError("an alias refers to a node that contains it")
    open_nodes.add(key)
    children = node.value if isinstance(node, yaml.SequenceNode) else []
    if isinstance(node, yaml.MappingNode):
        children = [item for pair in node.value for item in pair]
    total = 1 + sum(_count_values(child, counted, open_nodes) for child in children)
    open_nodes.discard(key)
    if total > MAX_MANIFEST_VALUES:
        raise yaml.YAMLError(f"expands to more than {MAX_MANIFEST_VALUES} values (YAML aliases)")
    counted[key] = total
    return total


def parse_manifest(raw: Any, source: str = MANIFEST_FILE) -> Manifest:
    try:
        manifest = msgspec.convert(raw, Manifest)
    except msgspec.ValidationError as exc:
        raise ManifestError(f"{source}: {exc}") from None
    _check_consistency(manifest, source)
    return manifest


def _check_consistency(m: Manifest, source: str) -> None:
    for field, value in (("name", m.name), ("version", m.version)):
        # Each becomes a folder name in a repository: one plain path component, never a way out of it.
        if not value or value in (".", "..") or any(c in value for c in "/\\\0"):
            raise ManifestError(f"{source}: {field} {value[:100]!r} is not a plain folder name - at `$.{field}`")
    if m.input.kind == "features" and not m.input.features:
        raise ManifestError(f"{source}: input.kind is 'features' but input.features is empty - at `$.input.features`")
    if m.input.kind == "tensor" and len(m.input.tensors) != 1:
        raise ManifestError(f"{source}: input.kind 'tensor' needs exactly one tensor - at `$.input.tensors`")
    names = [f.name for f in m.input.features]
    if len(set(names)) != len(names):
        raise ManifestError(f"{source}: duplicate feature names - at `$.input.features`")
    if m.output.kind == "label" and not m.labels:
        raise ManifestError(f"{source}: output.kind 'label' needs labels - at `$.labels`")
    if m.prediction_log is not None and not 0.0 <= m.prediction_log.sample_rate <= 1.0:
        raise ManifestError(f"{source}: sample_rate must be within [0, 1] - at `$.prediction_log.sample_rate`")
    if not m.artifacts:
        raise ManifestError(f"{source}: no artifacts listed - at `$.artifacts`")


def write_manifest(bundle_dir: Path, manifest: Manifest) -> Path:
    path = bundle_dir / MANIFEST_FILE
    data = msgspec.to_builtins(manifest)
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path
