"""ONNX Runtime: one session per bundle; classifiers expose labels and probabilities."""

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
    def __init__(self, session: ort.InferenceSession, manifest: Manifest) -> None:
        self.session = session
        first = session.get_inputs()[0]
        self.input_name = manifest.options.get("input_name", first.name)
        self.input_dtype = _NP_TYPES.get(first.type, np.float32)
        self.labels = label_values(manifest) if manifest.output.kind == "label" else None
        self.probability_output = manifest.options.get("probability_output")
        self.label_output = manifest.options.get("label_output")
        self.output_names = [o.name for o in session.get_outputs()]
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
            first = np.asarray(outputs[self.output_names[0]])
            if first.ndim == 2 and first.shape[1] == 1:
                first = first[:, 0]
            return Prediction(values=first.tolist())
        probabilities = self._probabilities(outputs)
        if self.label_output:
            index = np.asarray(outputs[self.label_output]).astype(int)
            return Prediction(values=[self.labels[i] for i in index], probabilities=probabilities)
        if probabilities is None:
            raise ValueError("ONNX classifier has no probability output; set options.label_output")
        return Prediction(values=argmax_labels(probabilities, self.labels), probabilities=probabilities)

    def _probabilities(self, outputs: dict[str, Any]) -> np.ndarray | None:
        assert self.labels is not None
        if self.probability_output:
            return np.asarray(outputs[self.probability_output])
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
