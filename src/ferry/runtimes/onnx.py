"""ONNX Runtime: one session per bundle; classifiers answer their labels and probabilities."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import onnxruntime as ort

from ferry.bundle.artifacts import artifact_file, model_artifact
from ferry.bundle.manifest import Manifest
from ferry.runtimes.base import Prediction, Runtime, argmax_labels, label_values
from ferry.runtimes.images import parse_preprocessing

_NP_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int64)": np.int64}


class OnnxRuntime(Runtime):
    """A classifier answers its label output (each class mapped to its label) and its probability output, a
    tensor or ZipMap's per-row maps, as one [rows, classes] array in the order of the labels."""

    def __init__(self, session: ort.InferenceSession, manifest: Manifest) -> None:
        self.session = session
        first = session.get_inputs()[0]
        self.input_name = manifest.options.get("input_name", first.name)
        self.input_dtype = _NP_TYPES.get(first.type, np.float32)
        self.labels = label_values(manifest) if manifest.output.kind == "label" else None
        self.probability_output = manifest.options.get("probability_output")
        self.label_output = manifest.options.get("label_output")
        self.output_names = [o.name for o in session.get_outputs()]
        self.output_name = manifest.options.get("output_name", self.output_names[0])
        # The graph's own classes (``ferry build`` reads them from it): its label output answers these.
        classes = manifest.options.get("classes")
        self.classes: list[Any] | None = list(classes) if classes else None
        self.lookup: dict[Any, Any] = {}
        if self.classes is not None and self.labels is not None and len(self.classes) == len(self.labels):
            self.lookup = dict(zip(self.classes, self.labels, strict=True))
        self.has_proba = self.labels is None or self.probability_output is not None or self.label_output is None
        # Image bundles: encoded images in, decoded and preprocessed as the manifest declares.
        self.image = parse_preprocessing(manifest.options, f"{manifest.name}:{manifest.version}")

    @classmethod
    def load(cls, bundle_dir: Path, manifest: Manifest, trust_pickle: bool) -> Runtime:
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(manifest.options.get("threads", 1))
        options.inter_op_num_threads = 1
        path = model_artifact(bundle_dir, manifest, "model.onnx", "onnx")
        _check_external_data(path, bundle_dir, manifest)
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return cls(session, manifest)

    def predict(self, batch: Any) -> Prediction:
        if self.image is not None:
            from ferry.runtimes.images import decode_batch

            batch = decode_batch(batch, self.image)
        feed = {self.input_name: np.asarray(batch, dtype=self.input_dtype)}
        outputs = dict(zip(self.output_names, self.session.run(None, feed), strict=True))
        if self.labels is None:
            first = np.asarray(outputs[self.output_name])
            if first.ndim == 2 and first.shape[1] == 1:
                first = first[:, 0]
            return Prediction(values=first.tolist())
        probabilities = self._probabilities(outputs)
        if self.label_output:
            answered = np.asarray(outputs[self.label_output]).reshape(-1).tolist()
            if self.lookup:
                return Prediction(values=[self.lookup[c] for c in answered], probabilities=probabilities)
            return Prediction(values=[self.labels[int(i)] for i in answered], probabilities=probabilities)
        if probabilities is None:
            raise ValueError("ONNX classifier has no probability output; set options.label_output")
        return Prediction(values=argmax_labels(probabilities, self.labels), probabilities=probabilities)

    def _probabilities(self, outputs: dict[str, Any]) -> np.ndarray | None:
        assert self.labels is not None
        if self.probability_output:
            value = outputs[self.probability_output]
            if isinstance(value, list):  # ZipMap: one {class: probability} per row
                keys = self.classes if self.classes is not None else sorted(value[0]) if value else []
                return np.asarray([[row[k] for k in keys] for row in value], dtype=np.float32).reshape(-1, len(keys))
            return np.asarray(value)
        for value in outputs.values():
            array = np.asarray(value)
            if array.ndim == 2 and array.dtype.kind == "f" and array.shape[1] == len(self.labels):
                return array
        return None


def _check_external_data(path: Path, bundle_dir: Path, manifest: Manifest) -> None:
    """Weights an ONNX model keeps in other files are files onnxruntime opens: each must be a listed
    (so hashed) artifact inside the bundle, like the model itself."""
    data = path.read_bytes()
    if b"location" not in data:  # no external-data entry can exist without this key: skip the parse
        return
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    folder = PurePosixPath(path.relative_to(bundle_dir).as_posix()).parent
    for tensor in _get_all_tensors(onnx.load_model_from_string(data)):
        if uses_external_data(tensor):
            location = ExternalDataInfo(tensor).location
            # Relative to the model's folder, as onnxruntime reads it; contained() refuses '..' and absolute.
            name = location if PurePosixPath(location).is_absolute() else (folder / location).as_posix()
            artifact_file(bundle_dir, manifest.artifacts, name, f"external data of tensor '{tensor.name}'")
