"""A model's input/output contract, read from a running service: Ferry's native metadata or OIP v2 metadata."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from dataclasses import field as _field
from typing import Any

from ferry.errors import LoadTestError as LoadTestError  # re-exported: its old home
from ferry.errors import LoadTestUsage as LoadTestUsage

DTYPE_TO_V2 = {
    "float64": "FP64",
    "float32": "FP32",
    "int64": "INT64",
    "int32": "INT32",
    "bool": "BOOL",
    "string": "BYTES",
}
V2_TO_DTYPE = {v: k for k, v in DTYPE_TO_V2.items()} | {"FP16": "float32", "INT16": "int32", "INT8": "int32"}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # Ferry dtype: float64, float32, int64, int32, bool, string
    shape: list[int]
    allow_nan: bool = False
    categories: list[Any] | None = None  # a categorical column's values (from Ferry's native metadata)


def v2_datatype(spec: TensorSpec) -> str:
    """The OIP v2 datatype of a spec: a categorical's is that of its categories (BYTES for text)."""
    if spec.dtype != "category":
        return DTYPE_TO_V2.get(spec.dtype, "FP64")
    kinds = frozenset(type(c) for c in spec.categories or [])
    return _CATEGORY_TO_V2.get(kinds, "BYTES")


_CATEGORY_TO_V2 = {frozenset({bool}): "BOOL", frozenset({int}): "INT64", frozenset({float}): "FP64"}
_CATEGORY_TO_V2[frozenset({int, float})] = "FP64"


@dataclass
class ModelSchema:
    """What to send and what to expect back, whichever protocol published it.

    ``kind`` is features, tensor, text or image. ``inputs`` has one spec per feature (one value a row) for
    features models, else the input tensors. ``source`` says where it came from: native or v2.
    """

    name: str
    kind: str
    inputs: list[TensorSpec]
    output_kind: str = "tensor"  # label, number or tensor
    output_dtype: str = "float64"
    output_shape: list[int] = _field(default_factory=lambda: [-1])
    output_min: float | None = None
    output_max: float | None = None
    labels: list[str] | None = None
    field: str = "text"
    max_length: int | None = None
    sample_input: Any = None
    expected_output: Any = None  # what the sample answers, when the bundle declares it
    source: str = "native"
    v2_outputs: list[TensorSpec] = _field(default_factory=list)

    @property
    def feature_names(self) -> list[str]:
        return [t.name for t in self.inputs] if self.kind == "features" else []


def get_json(url: str, timeout: float = 10.0) -> Any:
    """GET a JSON document; any failure is a LoadTestError that names the URL."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise LoadTestError(f"GET {url} answered {exc.code}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise LoadTestError(f"cannot reach {url}: {getattr(exc, 'reason', exc)}") from None
    except json.JSONDecodeError:
        raise LoadTestError(f"GET {url} did not return JSON") from None


def default_model(base_url: str) -> str:
    """The only model a Ferry service lists; with several, the user must choose."""
    listing = get_json(f"{base_url}/models").get("models", [])
    names = [m["name"] for m in listing]
    if len(names) != 1:
        raise LoadTestError(f"the service serves {len(names)} models ({', '.join(names)}); choose one with --model")
    return str(names[0])


def from_native(meta: dict[str, Any]) -> ModelSchema:
    spec, out = meta["input"], meta["output"]
    kind = spec["kind"]
    if kind == "features":
        inputs = [
            TensorSpec(f["name"], f.get("dtype", "float64"), [1], f.get("allow_nan", False), f.get("categories"))
            for f in spec["features"]
        ]
    elif kind == "tensor":
        inputs = [
            TensorSpec(t["name"], t.get("dtype", "float64"), list(t.get("shape", [-1, -1])), t.get("allow_nan", False))
            for t in spec["tensors"]
        ]
    else:
        inputs = [TensorSpec(spec.get("field", "text"), "string", [-1])]
    return ModelSchema(
        name=meta["name"],
        kind=kind,
        inputs=inputs,
        output_kind=out["kind"],
        output_dtype=out.get("dtype", "float64"),
        output_shape=list(out.get("shape", [-1])),
        output_min=out.get("min"),
        output_max=out.get("max"),
        labels=meta.get("labels"),
        field=spec.get("field", "text"),
        max_length=spec.get("max_length"),
        sample_input=meta.get("sample_input"),
        expected_output=meta.get("expected_output"),
    )


def from_v2(meta: dict[str, Any]) -> ModelSchema:
    """OIP v2 model metadata: named input and output tensors with datatype and shape."""

    def spec(t: dict[str, Any]) -> TensorSpec:
        return TensorSpec(t["name"], V2_TO_DTYPE.get(str(t["datatype"]).upper(), "float64"), list(t["shape"]))

    inputs = [spec(t) for t in meta.get("inputs", [])]
    outputs = [spec(t) for t in meta.get("outputs", [])]
    if not inputs:
        raise LoadTestError(f"model {meta.get('name')}: its v2 metadata declares no inputs")
    kind = "text" if len(inputs) == 1 and inputs[0].dtype == "string" else "tensor"
    if len(inputs) > 1 and all(_one_value_per_row(t.shape) for t in inputs):
        kind = "features"  # one input per column, as MLServer's pandas codec publishes a DataFrame
        inputs = [TensorSpec(t.name, t.dtype, t.shape) for t in inputs]  # [-1] or [-1, 1]: one value a row
    first = outputs[0] if outputs else TensorSpec("output", "float64", [-1])
    return ModelSchema(
        name=meta["name"],
        kind=kind,
        inputs=inputs,
        output_kind="tensor",
        output_dtype=first.dtype,
        output_shape=first.shape,
        field=inputs[0].name,
        source="v2",
        v2_outputs=outputs,
    )


def _one_value_per_row(shape: list[int]) -> bool:
    return len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)


def with_native_columns(schema: ModelSchema, native: ModelSchema) -> ModelSchema:
    """A v2 schema of columns, completed by what only Ferry's native metadata says of them: categories,
    missing values allowed, the sample row. Left as it is unless both name the same columns."""
    if schema.kind != "features" or native.kind != "features" or schema.feature_names != native.feature_names:
        return schema
    schema.inputs = [
        TensorSpec(v2.name, own.dtype, v2.shape, own.allow_nan, own.categories)
        for v2, own in zip(schema.inputs, native.inputs, strict=True)
    ]
    schema.sample_input = native.sample_input
    return schema


def fetch_schema(base_url: str, model: str | None, prefer: str = "native") -> ModelSchema:
    """Read the model's schema: Ferry's native metadata first, else OIP v2 (any compliant server)."""
    base_url = base_url.rstrip("/")
    order = ["native", "v2"] if prefer != "v2" else ["v2", "native"]
    errors = []
    for source in order:
        try:
            if source == "native":
                name = model or default_model(base_url)
                return from_native(get_json(f"{base_url}/models/{name}/metadata"))
            if model is None:
                raise LoadTestError("--model is required for a v2 service")
            schema = from_v2(get_json(f"{base_url}/v2/models/{model}"))
            if schema.kind == "features":  # a Ferry service says more of its columns natively
                try:
                    return with_native_columns(schema, from_native(get_json(f"{base_url}/models/{model}/metadata")))
                except (LoadTestError, KeyError, TypeError, AttributeError):
                    pass
            return schema
        except LoadTestError as exc:
            errors.append(exc.message)
        except (KeyError, TypeError, AttributeError) as exc:
            errors.append(f"{source} metadata has an unexpected shape ({exc!r})")
    raise LoadTestError("cannot read the model's metadata: " + "; ".join(errors))


def v2_inputs(base_url: str, model: str) -> list[TensorSpec] | None:
    """The service's own v2 input tensors, when it publishes them; None when it does not speak v2."""
    try:
        return from_v2(get_json(f"{base_url.rstrip('/')}/v2/models/{model}")).inputs
    except (LoadTestError, KeyError, TypeError, AttributeError):
        return None
