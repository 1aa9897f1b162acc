"""The image-classifier reference, offline: two small ONNX classifiers trained on pictures made here.

- ``general`` tells rendered shapes apart (circle, square, triangle, stripes);
- ``plants`` (the "mountain" target of the routing demo) tells a flower from a building, on crops of
  the two photos scikit-learn ships.

Each is a softmax regression trained with numpy and written as an ONNX graph with ``onnx.helper``;
decoding and preprocessing (resize, scale, mean/std, channel order, layout) are declared in the
bundle, and the ONNX runtime applies them. Both answer the reference's routes.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ferry.builder import build
from ferry.bundle.manifest import CompatRoute
from ferry.runtimes.images import ImagePreprocessing, to_tensor

if TYPE_CHECKING:
    from PIL.Image import Image

SIZE = 24
PREPROCESSING: dict[str, Any] = {
    "size": [SIZE, SIZE],
    "mode": "RGB",
    "channel_order": "RGB",
    "layout": "NCHW",
    "scale": 1.0 / 255.0,
    "mean": [0.5, 0.5, 0.5],
    "std": [0.25, 0.25, 0.25],
    "max_pixels": 4_000_000,
}
SHAPES = ["circle", "square", "triangle", "stripes"]
PLANTS = ["flower", "building"]

# The reference's route set, on each image model: /health is built in.
REFERENCE_ROUTES: list[CompatRoute | dict[str, Any]] = [
    {"method": "GET", "path": "/metadata", "action": "metadata", "response_key": None},
    {"method": "GET", "path": "/label", "action": "labels", "response_key": None},
    {"method": "GET", "path": "/predict/test", "action": "predict_test", "response_key": "prediction"},
    {"method": "POST", "path": "/predict", "response_key": "prediction"},
]


def render_shape(kind: str, rng: np.random.Generator, size: int = 48) -> Image:
    """One picture of a shape in a random colour on a random dark background, slightly off-centre."""
    from PIL import Image, ImageDraw

    background = tuple(int(v) for v in rng.integers(0, 90, 3))
    colour = tuple(int(v) for v in rng.integers(140, 256, 3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    centre = size / 2 + rng.uniform(-3, 3, 2)
    radius = size * rng.uniform(0.25, 0.38)
    (x, y), r = centre, radius
    if kind == "circle":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
    elif kind == "square":
        draw.rectangle((x - r, y - r, x + r, y + r), fill=colour)
    elif kind == "triangle":
        draw.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=colour)
    else:
        for top in range(int(rng.integers(0, 4)), size, 8):
            draw.rectangle((0, top, size, top + 3), fill=colour)
    return image


def photo_crops(rng: np.random.Generator, count: int) -> tuple[list[Image], list[int]]:
    """Random square crops of scikit-learn's two sample photos: the flower (0) and the temple (1)."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    china, flower = load_sample_images().images
    photos = {0: flower, 1: china}
    crops, labels = [], []
    for i in range(count):
        label = i % 2
        photo = photos[label]
        height, width = photo.shape[:2]
        side = int(rng.integers(96, 200))
        top, left = int(rng.integers(0, height - side)), int(rng.integers(0, width - side))
        crops.append(Image.fromarray(photo[top : top + side, left : left + side]))
        labels.append(label)
    return crops, labels


def train_softmax(x: np.ndarray, y: np.ndarray, classes: int, steps: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Full-batch gradient descent on L2-regularised softmax regression; deterministic."""
    x = x.reshape(len(x), -1).astype(np.float64)
    weights, bias = np.zeros((x.shape[1], classes)), np.zeros(classes)
    onehot = np.eye(classes)[y]
    for _ in range(steps):
        logits = x @ weights + bias
        logits -= logits.max(axis=1, keepdims=True)
        probabilities = np.exp(logits)
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        error = (probabilities - onehot) / len(x)
        weights -= 0.5 * (x.T @ error + 1e-3 * weights)
        bias -= 0.5 * error.sum(axis=0)
    return weights.astype(np.float32), bias.astype(np.float32)


def softmax_onnx(weights: np.ndarray, bias: np.ndarray, input_shape: list[int], path: Path) -> Path:
    """image [N, C, H, W] -> Flatten -> MatMul + Add -> Softmax -> probabilities [N, K]."""
    from onnx import TensorProto, helper, numpy_helper, save

    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["image"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "weights"], ["scores"]),
            helper.make_node("Add", ["scores", "bias"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "softmax_regression",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", *input_shape])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", weights.shape[1]])],
        [numpy_helper.from_array(weights, "weights"), numpy_helper.from_array(bias, "bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="ferry")
    model.ir_version = 8
    save(model, str(path))
    return path


def png_base64(image: Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return base64.b64encode(buffer.getvalue()).decode()


def _bundle(repo: Path, name: str, images: list[Image], labels: list[int], names: list[str], sample: Image) -> Path:
    import tempfile

    spec = ImagePreprocessing(**PREPROCESSING)
    x = np.stack([to_tensor(image, spec) for image in images])
    y = np.asarray(labels)
    split = len(x) * 4 // 5
    weights, bias = train_softmax(x[:split], y[:split], len(names))
    accuracy = float((np.argmax(x[split:].reshape(len(x) - split, -1) @ weights + bias, axis=1) == y[split:]).mean())
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = softmax_onnx(weights, bias, list(x.shape[1:]), Path(tmp) / "model.onnx")
        return build(
            onnx_path,
            name,
            repo,
            version="1",
            input_schema={"kind": "image", "field": "image_data", "max_length": 8_000_000},
            output_schema={"kind": "label", "dtype": "string"},
            labels=names,
            sample_input={"image_data": png_base64(sample)},
            options={"image": PREPROCESSING, "probability_output": "probabilities"},
            metadata={
                "metrics": {"holdout_accuracy": round(accuracy, 4), "train_images": split},
                "description": f"Tiny image classifier ({', '.join(names)}), softmax regression on {SIZE}x{SIZE} RGB",
            },
            routes=REFERENCE_ROUTES,
        )


def build_general(repo: Path) -> Path:
    """The "general" classifier: rendered shapes."""
    rng = np.random.default_rng(0)
    labels = [i % len(SHAPES) for i in range(480)]
    images = [render_shape(SHAPES[label], rng) for label in labels]
    return _bundle(repo, "general", images, labels, SHAPES, render_shape("circle", np.random.default_rng(7)))


def build_plants(repo: Path) -> Path:
    """The plant classifier, the target of ``target: mountain``: flower or building, from real photos."""
    crops, labels = photo_crops(np.random.default_rng(0), 240)
    sample = photo_crops(np.random.default_rng(7), 1)[0][0].resize((64, 64))
    return _bundle(repo, "plants", crops, labels, PLANTS, sample)
