"""Open Inference Protocol v2, transport-free: shared by REST and gRPC.

A model's manifest fixes its OIP signature (``input_specs``/``output_specs``); ``to_batch`` turns request
tensors into the runtime batch and ``to_outputs`` turns a ``Prediction`` into response tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ferry._version import __version__
from ferry.bundle import mlserver
from ferry.bundle.manifest import Manifest
from ferry.errors import FerryError, InvalidInput
from ferry.protocol.tensors import ACCEPTS, DATATYPES, FERRY_DATATYPES, Tensor
from ferry.runtimes import Prediction
from ferry.runtimes.explain import explanation_of
from ferry.serving.inputs import InputCodec, value_dtype
from ferry.serving.registry import ModelHandle

EXTENSIONS = ["binary_tensor_data"]
MATRIX_INPUT = "input"  # the one [-1, n_features] tensor of a tabular model
# The names the matrix goes by: the one the metadata publishes, and the one MLServer's and KServe's clients
# give a model's first input (the manifest names features, not the matrix). Any other is a 400.
MATRIX_NAMES = (MATRIX_INPUT, "input-0")

_NUMPY = {"float64": np.float64, "float32": np.float32, "int64": np.int64, "int32": np.int32, "bool": np.bool_}


@dataclass
class RequestedOutput:
    name: str
    binary: bool | None = None  # None: as the request-wide ``binary_data_output`` says


@dataclass
class InferRequest:
    inputs: list[Tensor]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    outputs: list[RequestedOutput] | None = None  # None: every output


def server_metadata() -> dict[str, Any]:
    return {"name": "ferry", "version": __version__, "extensions": EXTENSIONS}


def model_metadata(
    handle: ModelHandle, versions: list[str], explanation: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The model's OIP metadata; ``versions`` are the versions the server holds (the codec never sees the registry),
    ``explanation`` how ``parameters.explain`` answers (``DataPlane.explanation``; else the runtime's own)."""
    assert handle.model is not None
    manifest = handle.model.manifest
    if explanation is None:
        explanation = explanation_of(handle.model.runtime, manifest.runtime)
    return {
        "name": handle.name,
        "versions": versions,
        "platform": f"ferry_{manifest.runtime}",
        "inputs": input_specs(manifest),
        "outputs": output_specs(handle),
        # Beyond the OIP schema (REST clients ignore it; gRPC's message has no field for it, so gRPC leaves it
        # out): how ``parameters.explain`` answers (``ferry.protocol.v2_explain``), or why it cannot.
        "explanation": explanation,
    }


def model_config(handle: ModelHandle) -> dict[str, Any]:
    """A minimal Triton model configuration, from the manifest: ``GET /v2/models/{name}/config``.

    Tensors are listed without their batch dimension, as Triton does when ``max_batch_size`` > 0.
    """
    assert handle.model is not None
    manifest = handle.model.manifest
    batching = manifest.batching
    enabled = batching.enabled if batching.enabled is not None else manifest.runtime != "python"
    max_batch = batching.max_batch_size if enabled else 0

    def entries(specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for tensor in specs:
            dims = tensor["shape"][1:] if max_batch > 0 and tensor["shape"] else tensor["shape"]
            datatype = "STRING" if tensor["datatype"] == "BYTES" else tensor["datatype"]  # Triton's name for BYTES
            out.append({"name": tensor["name"], "data_type": f"TYPE_{datatype}", "dims": dims or [1]})
        return out

    return {
        "name": handle.name,
        "platform": f"ferry_{manifest.runtime}",
        "backend": "ferry",
        "version_policy": {"specific": {"versions": [handle.version]}},
        "max_batch_size": max_batch,
        "input": entries(input_specs(manifest)),
        "output": entries(output_specs(handle)),
    }


def spec(name: str, datatype: str, shape: list[int]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape}


def input_specs(manifest: Manifest) -> list[dict[str, Any]]:
    schema = manifest.input
    if schema.kind == "features":
        dtypes = {f.dtype for f in schema.features}
        if len(dtypes) == 1 and "category" not in dtypes:
            return [spec(MATRIX_INPUT, FERRY_DATATYPES[dtypes.pop()], [-1, len(schema.features)])]
        return [spec(f.name, FERRY_DATATYPES[value_dtype(f)], [-1]) for f in schema.features]
    if schema.kind == "tensor":
        tensor = schema.tensors[0]
        return [spec(tensor.name, FERRY_DATATYPES[tensor.dtype], list(tensor.shape))]
    return [spec(schema.field, "BYTES", [-1])]


# scikit-learn, LightGBM, XGBoost and CatBoost models answer under MLServer's names, ``predict`` and
# ``predict_proba`` (its runtimes for each), so its clients ask for the same outputs; an ONNX graph's outputs keep
# the graph's own names, as Triton answers them.
# Ferry's earlier names (label, probabilities, prediction) stay as aliases a client may ask for by name.
_LABEL_DATATYPES = {"int64": "INT64", "int32": "INT32", "bool": "BOOL", "float": "FP64"}
_MLSERVER_NAMED = frozenset({"sklearn", "lightgbm", "xgboost", "catboost"})
# Probabilities come in the library's own float: ONNX graphs' and XGBoost's are float32, the others' float64.
_FP32_PROBABILITIES = frozenset({"onnx", "xgboost"})


def _names(manifest: Manifest) -> tuple[str, str, str]:
    """(label, probabilities, number) output names of the model."""
    if manifest.runtime in _MLSERVER_NAMED:
        return "predict", "predict_proba", "predict"
    if manifest.runtime == "onnx":
        options = manifest.options
        names = (options.get("label_output"), options.get("probability_output"), options.get("output_name"))
        return names[0] or "label", names[1] or "probabilities", names[2] or "prediction"
    return "label", "probabilities", "prediction"


def _aliases(manifest: Manifest) -> dict[str, str]:
    """Ferry's earlier output names -> the model's own."""
    label, probabilities, number = _names(manifest)
    return {
        "label": label,
        "probabilities": probabilities,
        "prediction": label if manifest.output.kind == "label" else number,
    }


def output_specs(handle: ModelHandle) -> list[dict[str, Any]]:
    """The outputs every answer holds, by name, datatype and shape (what the metadata publishes)."""
    assert handle.model is not None
    manifest = handle.model.manifest
    output = manifest.output
    label, probabilities, number = _names(manifest)
    if output.kind == "label":
        specs = [spec(label, _LABEL_DATATYPES.get(output.dtype, "BYTES"), [-1])]
        # Not every classifier has probabilities (a Perceptron has none); sklearn's runtime says which.
        if getattr(handle.model.runtime, "has_proba", True):
            datatype = "FP32" if manifest.runtime in _FP32_PROBABILITIES else "FP64"
            specs.append(spec(probabilities, datatype, [-1, len(manifest.labels or [])]))
        return specs
    return [spec(number, FERRY_DATATYPES.get(output.dtype, "FP64"), list(output.shape))]


def requestable(handle: ModelHandle) -> list[str]:
    """Output names a request may ask for: the model's, and the aliases of those it has."""
    assert handle.model is not None
    known = [s["name"] for s in output_specs(handle)]
    aliases = _aliases(handle.model.manifest)
    return known + [alias for alias, name in aliases.items() if name in known and alias not in known]


MAX_REQUESTED_OUTPUTS = 64  # a model has a handful; a request naming more is refused before they are looked up


def check_output_count(count: int, where: str) -> None:
    if count > MAX_REQUESTED_OUTPUTS:
        raise InvalidInput(f"{count} outputs asked for; at most {MAX_REQUESTED_OUTPUTS}", where)


def check_requested(request: InferRequest, handle: ModelHandle, where: str = "$.outputs") -> None:
    """Refuse an unknown requested output before the model runs."""
    if request.outputs is None:
        return
    check_output_count(len(request.outputs), where)
    allowed = requestable(handle)
    known = [s["name"] for s in output_specs(handle)]  # the error names the model's own (the aliases are older)
    for i, requested in enumerate(request.outputs):
        if requested.name not in allowed:
            raise InvalidInput(
                f"unknown output '{requested.name}'; model '{handle.name}' has outputs: {', '.join(known)}",
                f"{where}[{i}].name",
            )


# -- request tensors -> runtime batch -------------------------------------------------------------------
def to_batch(inputs: list[Tensor], handle: ModelHandle) -> Any:
    assert handle.codec is not None and handle.model is not None
    codec = handle.codec
    if not inputs:
        raise InvalidInput(f"no inputs; model '{handle.name}' takes {_describe(handle)}", "$.inputs")
    seen: set[str] = set()
    for tensor in inputs:
        if tensor.name in seen:
            raise InvalidInput(f"input '{tensor.name}' appears twice", tensor.where)
        seen.add(tensor.name)
    if codec.kind == "features":
        return _features(inputs, handle)
    expected = codec.schema.tensors[0].name if codec.kind == "tensor" else codec.schema.field
    tensor = _only(inputs, expected, handle)
    if codec.kind == "tensor":
        return _tensor(tensor, codec)
    return _strings(tensor, codec)


def _describe(handle: ModelHandle) -> str:
    assert handle.model is not None
    specs = input_specs(handle.model.manifest)
    described = ", ".join(f"'{s['name']}' {s['datatype']} {s['shape']}" for s in specs)
    if handle.codec is not None and handle.codec.kind == "features" and len(specs) == 1:
        described += f", or one [-1] tensor per feature: {', '.join(handle.codec.feature_names)}"
    return described


def _only(inputs: list[Tensor], name: str, handle: ModelHandle) -> Tensor:
    """The model's one input, named as the model declares; an error blames the tensor that is not."""
    for tensor in inputs:
        if tensor.name != name:
            takes = _describe(handle)
            raise InvalidInput(
                f"unknown input '{tensor.name}'; model '{handle.name}' takes {takes}", f"{tensor.where}.name"
            )
    return inputs[0]


def takes_any_name(manifest: Manifest) -> bool:
    """A model converted from an MLServer repository takes its one input whatever its name, as MLServer does."""
    return manifest.metadata.get("source") == mlserver.SOURCE


def _any_name(handle: ModelHandle) -> bool:
    assert handle.model is not None
    return takes_any_name(handle.model.manifest)


def _check_datatype(tensor: Tensor, dtype: str, what: str) -> None:
    if tensor.datatype not in ACCEPTS[dtype]:
        raise InvalidInput(
            f"input '{tensor.name}' has datatype {tensor.datatype} but {what} takes {FERRY_DATATYPES[dtype]}"
            f" (accepted: {', '.join(ACCEPTS[dtype])})",
            f"{tensor.where}.datatype",
        )


def _check_rows(tensor: Tensor, ranks: tuple[int, ...], width: int | None) -> int:
    shape = tensor.shape
    if len(shape) not in ranks or (width is not None and len(shape) == 2 and shape[1] != width):
        wanted = " or ".join(str([-1, width] if r == 2 else [-1]) for r in ranks)
        raise InvalidInput(f"input '{tensor.name}' has shape {shape}; expected {wanted}", f"{tensor.where}.shape")
    if shape[0] == 0:
        raise InvalidInput("empty batch: send at least one row", f"{tensor.where}.shape")
    return shape[0]


def _check_finite(array: np.ndarray, allowed: bool, where: str) -> None:
    if not allowed and array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InvalidInput("NaN or infinity is not allowed (JSON's null is NaN: a missing value)", where)


def _features(inputs: list[Tensor], handle: ModelHandle) -> Any:
    assert handle.codec is not None
    codec = handle.codec
    features = codec.features
    # One tensor that is not named after a feature is the [rows, features] matrix, named as the metadata says.
    if len(inputs) == 1 and inputs[0].name not in codec.name_set:
        tensor = inputs[0]
        if tensor.name not in MATRIX_NAMES and not _any_name(handle):
            raise InvalidInput(
                f"unknown input '{tensor.name}'; model '{handle.name}' takes {_describe(handle)}",
                f"{tensor.where}.name",
            )
        if (codec.dtype == "string" and len({f.dtype for f in features}) > 1) or codec.dtype == "category":
            if tensor.datatype != "BYTES":
                raise InvalidInput(
                    f"model '{handle.name}' has features of several types; send one tensor per feature "
                    f"({', '.join(codec.feature_names)}), or one BYTES [-1, {len(features)}] tensor of their values "
                    "as text",
                    tensor.where,
                )
            # One BYTES matrix of text (what a client holding a mixed DataFrame sends as one tensor): each
            # column's text read as its feature's type.
            count = _check_rows(tensor, (2,), len(features))
            texts = _strings_of(tensor.data.reshape(-1), tensor.where)
            width = len(features)
            text_rows = [texts[i * width : (i + 1) * width] for i in range(count)]
            return codec.from_text_rows(text_rows, f"{tensor.where}.data")
        _check_datatype(tensor, codec.dtype, f"model '{handle.name}'")
        _check_rows(tensor, (2,), len(features))
        data = tensor.data
        if not tensor.finite and data.dtype.kind == "f" and not np.isfinite(data).all():  # one check when finite
            for j, feature in enumerate(features):
                _check_finite(data[:, j], feature.allow_nan, f"{tensor.where}.data (feature '{feature.name}')")
        return _cast(data, codec.dtype)
    by_name = {t.name: t for t in inputs}
    matrix = next((name for name in MATRIX_NAMES if name in by_name and name not in codec.name_set), None)
    if matrix is not None:  # the matrix, and tensors beside it: blame one beside it
        extra = next(t for t in inputs if t.name != matrix)
        raise InvalidInput(
            f"unknown input '{extra.name}'; model '{handle.name}' takes {_describe(handle)}", f"{extra.where}.name"
        )
    for tensor in inputs:
        if tensor.name not in codec.name_set:
            raise InvalidInput(
                f"unknown input '{tensor.name}'; model '{handle.name}' takes {_describe(handle)}",
                f"{tensor.where}.name",
            )
    missing = [name for name in codec.feature_names if name not in by_name]
    if missing:
        raise InvalidInput(f"missing input '{missing[0]}'; model '{handle.name}' takes {_describe(handle)}", "$.inputs")
    columns: list[Any] = []
    rows = None
    for feature in features:
        tensor = by_name[feature.name]
        takes = value_dtype(feature)
        _check_datatype(tensor, takes, f"feature '{feature.name}'")
        n = _check_rows(tensor, (1, 2), 1)
        if rows is not None and n != rows:
            raise InvalidInput(
                f"input '{tensor.name}' has {n} rows but the others have {rows}", f"{tensor.where}.shape"
            )
        rows = n
        column = tensor.data.reshape(-1)
        if not tensor.finite:
            _check_finite(column, feature.allow_nan, f"{tensor.where}.data")
        columns.append(_strings_of(column, tensor.where) if tensor.datatype == "BYTES" else column)
    if codec.dtype in _NUMPY:
        return _cast(np.column_stack(columns), codec.dtype)
    table = np.empty((rows or 0, len(features)), dtype=object)
    for j, column in enumerate(columns):
        table[:, j] = column if isinstance(column, list) else column.tolist()
    codec.check_known(table, "$.inputs")
    return table


def _tensor(tensor: Tensor, codec: InputCodec) -> Any:
    declared = codec.shape
    shape = tensor.shape
    if len(shape) != len(declared) or any(d >= 0 and d != s for d, s in zip(declared, shape, strict=True)):
        raise InvalidInput(f"input '{tensor.name}' has shape {shape}; expected {declared}", f"{tensor.where}.shape")
    if shape[0] == 0:
        raise InvalidInput("empty batch: send at least one row", f"{tensor.where}.shape")
    _check_datatype(tensor, codec.dtype, "the model")
    if not tensor.finite:
        _check_finite(tensor.data, codec.allow_nan, f"{tensor.where}.data")
    return _cast(tensor.data, codec.dtype)


def _strings(tensor: Tensor, codec: InputCodec) -> Any:
    if tensor.datatype != "BYTES":
        raise InvalidInput(
            f"input '{tensor.name}' has datatype {tensor.datatype} but the model takes BYTES",
            f"{tensor.where}.datatype",
        )
    _check_rows(tensor, (1, 2), 1)
    items = tensor.data.reshape(-1).tolist()
    if codec.kind == "image" and all(isinstance(item, bytes) for item in items):
        return items  # raw image bytes from the binary extension or gRPC
    return codec.from_rows(_strings_of(tensor.data.reshape(-1), tensor.where), f"{tensor.where}.data")


def _strings_of(column: np.ndarray, where: str) -> list[str]:
    out = []
    for i, item in enumerate(column.tolist()):
        if isinstance(item, bytes):
            try:
                item = item.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidInput("BYTES element is not valid UTF-8", f"{where}.data[{i}]") from None
        out.append(item)
    return out


def _cast(array: np.ndarray, dtype: str) -> np.ndarray:
    wanted = _NUMPY.get(dtype, object)
    if array.dtype.type is wanted and array.flags.c_contiguous:  # the common case: no call at all
        return array
    return np.ascontiguousarray(array, dtype=wanted)


# -- prediction -> response tensors ---------------------------------------------------------------------
# A response tensor before it is one: name, datatype, shape and values (labels as a list of text).
Column = tuple[str, str, list[int], "list[Any] | np.ndarray"]


def output_columns(prediction: Prediction, handle: ModelHandle) -> list[Column]:
    """Every output of the model's signature that the prediction holds, in signature order."""
    assert handle.model is not None
    manifest = handle.model.manifest
    label, proba, number = _names(manifest)
    if manifest.output.kind == "label":
        typed = _LABEL_DATATYPES.get(manifest.output.dtype)
        count = len(prediction.values)
        columns: list[Column] = [
            (label, typed, [count], np.asarray(prediction.values, dtype=DATATYPES[typed]))
            if typed is not None and all(type(v) in (int, bool, float) for v in prediction.values)
            else (label, "BYTES", [count], [str(v) for v in prediction.values])
        ]
        if prediction.probabilities is not None:
            probabilities = np.asarray(prediction.probabilities)
            datatype = "FP32" if probabilities.dtype == np.float32 else "FP64"
            columns.append((proba, datatype, list(probabilities.shape), probabilities))
        return columns
    values = np.asarray(prediction.values)
    if manifest.output.dtype == "float32" and values.dtype == np.float64:
        values = values.astype(np.float32)  # as the metadata says (the runtime's list held float32 values)
    return [(number, datatype_of(values, handle.name), list(values.shape), values)]


def to_outputs(prediction: Prediction, handle: ModelHandle, request: InferRequest) -> list[Tensor]:
    tensors = [
        Tensor(name, datatype, shape, _array(values))
        for name, datatype, shape, values in output_columns(prediction, handle)
    ]
    if request.outputs is None:
        return tensors
    by_name = {t.name: t for t in tensors}
    assert handle.model is not None
    for alias, name in _aliases(handle.model.manifest).items():  # asked for by an earlier name: answered so
        if alias not in by_name and name in by_name:
            found = by_name[name]
            by_name[alias] = Tensor(alias, found.datatype, found.shape, found.data)
    missing = [r.name for r in request.outputs if r.name not in by_name]
    if missing:
        raise InvalidInput(f"model '{handle.name}' produced no output '{missing[0]}' for this request", "$.outputs")
    return [by_name[r.name] for r in request.outputs]


def _array(values: list[Any] | np.ndarray) -> np.ndarray:
    if isinstance(values, np.ndarray):
        return values
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


def datatype_of(array: np.ndarray, model: str) -> str:
    for datatype, dtype in DATATYPES.items():
        if datatype != "BYTES" and array.dtype == dtype:
            return datatype
    if array.dtype.kind in "OUS" and array.ndim >= 1:
        return "BYTES"
    raise FerryError(f"model '{model}' returned values that are not a regular tensor ({array.dtype})")
