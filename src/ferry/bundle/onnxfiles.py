"""ONNX model files: the graph's input, and what it answers, read once at build from the graph itself.

A classifier (an ``ai.onnx.ml`` classifier or ``ZipMap`` node with class labels, as skl2onnx writes them) keeps
its contract: the label output, the probability output (a tensor, or ZipMap's maps) and the graph's own output
names, recorded in ``options`` for the runtime and the v2 codec. A graph of one probability tensor becomes a
classifier when ``--labels`` names its classes. Anything else answers its first output, by its own name and type.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ferry.errors import ManifestError

# (runtime, input schema, output schema, labels), as the builder records them.
Inferred = tuple[str, dict[str, Any] | None, dict[str, Any], list[str] | None]

ARTIFACT = "model.onnx"
# ONNX tensor types -> manifest dtypes.
DTYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(bool)": "bool",
    "tensor(string)": "string",
}
_LABEL_TYPES = ("tensor(int64)", "tensor(string)")
_CLASS_ATTRIBUTES = ("classlabels_int64s", "classlabels_ints", "classlabels_strings")


def onnx_file(path: Path, staging: Path, options: dict[str, Any]) -> Inferred:
    """Copy an ONNX file into the bundle; its input, and its outputs as a classifier's or as one tensor."""
    import onnxruntime as ort

    shutil.copy2(path, staging / ARTIFACT)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    first = session.get_inputs()[0]
    shape = [d if isinstance(d, int) else -1 for d in first.shape]
    dtype = {"tensor(double)": "float64", "tensor(int64)": "int64"}.get(first.type, "float32")
    schema = {"kind": "tensor", "tensors": [{"name": first.name, "dtype": dtype, "shape": shape}]}
    outputs = [(o.name, o.type, o.shape) for o in session.get_outputs()]
    classes = graph_classes(path)
    label = next((name for name, kind, _ in outputs if kind in _LABEL_TYPES), None)
    if classes is None or label is None:
        name, kind, dims = outputs[0]
        options["output_name"] = name
        out_shape = [d if isinstance(d, int) else -1 for d in dims] or [-1]
        if len(out_shape) == 2 and out_shape[1] == 1:
            out_shape = [-1]  # a column is answered as one value per row
        return "onnx", schema, {"kind": "tensor", "dtype": DTYPES.get(kind, "float32"), "shape": out_shape}, None
    options["label_output"] = label
    options["classes"] = classes
    probability = next((name for name, kind, _ in outputs if _probability_type(kind)), None)
    if probability is not None:
        options["probability_output"] = probability
    output = {"kind": "label", "dtype": "int64" if isinstance(classes[0], int) else "string"}
    return "onnx", schema, output, [str(c) for c in classes]


def onnx_labelled(staging: Path, options: dict[str, Any], output: dict[str, Any], count: int) -> dict[str, Any]:
    """``--labels`` over an ONNX graph: a classifier's classes renamed, or a probability tensor's columns named."""
    if output.get("kind") == "label":
        return output
    import onnxruntime as ort

    session = ort.InferenceSession(str(staging / ARTIFACT), providers=["CPUExecutionProvider"])
    first = session.get_outputs()[0]
    width = first.shape[1] if len(first.shape) == 2 else None
    if first.type not in ("tensor(float)", "tensor(double)") or width != count:
        raise ManifestError(
            f"--labels names {count} classes, but the ONNX graph's output '{first.name}' is {first.type} "
            f"{[d if isinstance(d, int) else -1 for d in first.shape]}, not one probability per class"
        )
    options.pop("output_name", None)
    options["probability_output"] = first.name
    return {"kind": "label", "dtype": "string"}


def graph_classes(path: Path) -> list[Any] | None:
    """The class labels a classifier graph holds (ZipMap's, else its classifier node's), ints or strings."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    nodes = [n for n in graph.node if n.domain == "ai.onnx.ml"]
    zipmaps = [n for n in nodes if n.op_type == "ZipMap"]
    for node in zipmaps or [n for n in reversed(nodes) if n.op_type.endswith("Classifier")]:
        for attribute in node.attribute:
            if attribute.name in _CLASS_ATTRIBUTES and (attribute.ints or attribute.strings):
                if attribute.strings:
                    return [s.decode("utf-8") for s in attribute.strings]
                return [int(i) for i in attribute.ints]
    return None


def _probability_type(kind: str) -> bool:
    return kind in ("tensor(float)", "tensor(double)") or kind.startswith("seq(map(")
