"""The reference baseline for bench/examples.sh: a hand-written Flask app serving the example bundles.

It loads the SAME artifacts that `ferry examples build` writes (skops, LightGBM text model, ONNX) and
does the same preprocessing, written the way a data scientist would write it by hand:

  POST /models/iris/predict      {"length": 5.1, "width": 2.4}  -> {"prediction": "virginica"}
  POST /models/diabetes/predict  {"bmi": 0.05}                  -> {"prediction": 199.6...}
  POST /models/reviews/predict   {"text": "..."}                -> {"prediction": 5.0}   (clipped to the manifest's min/max)
  POST /models/general/predict   {"image_data": "<base64 PNG>"} -> {"prediction": "circle", "probabilities": {...}}

The bundle folder comes from EXAMPLES_DIR (a repository built by `ferry examples build` and
`ferry examples build --images`). Ferry itself is not imported: only the artifacts and the
settings written in each bundle's ferry.yaml are read.
Run: EXAMPLES_DIR=/path gunicorn -w 1 -k sync -b 127.0.0.1:5000 app:app
"""
import base64
import io
import os

import lightgbm as lgb
import numpy as np
import onnxruntime as ort
import skops.io as sio
import yaml
from flask import Flask, jsonify, request
from PIL import Image
from sklearn.feature_extraction.text import HashingVectorizer

REPO = os.environ.get("EXAMPLES_DIR", "examples")


def bundle(name):
    folder = os.path.join(REPO, name, "1")
    with open(os.path.join(folder, "ferry.yaml")) as f:
        return folder, yaml.safe_load(f)


def load_skops(name):
    folder, manifest = bundle(name)
    trusted = manifest.get("options", {}).get("skops_trusted_types", [])
    return sio.load(os.path.join(folder, "model.skops"), trusted=trusted), manifest


# --- iris: sklearn Pipeline (StandardScaler + Perceptron), classes 0..2 -> labels
iris, iris_manifest = load_skops("iris")
IRIS_LABELS = iris_manifest["labels"]

# --- diabetes: sklearn LinearRegression on one feature
diabetes, _ = load_skops("diabetes")

# --- reviews: LightGBM booster on hashed character n-grams (the featurizer declared in the manifest)
reviews_dir, reviews_manifest = bundle("reviews")
reviews = lgb.Booster(model_file=os.path.join(reviews_dir, "model.txt"))
feat = reviews_manifest["options"]["featurizer"]
vectorizer = HashingVectorizer(
    analyzer=feat["analyzer"],
    ngram_range=tuple(feat["ngram_range"]),
    n_features=feat["n_features"],
    # Not in the manifest: the training code's settings (ferry.runtimes.lightgbm.make_featurizer).
    # sklearn's defaults (alternate_sign=True) give other features and another prediction.
    alternate_sign=False,
    norm="l2",
)
REVIEWS_MIN = reviews_manifest["output"].get("min")
REVIEWS_MAX = reviews_manifest["output"].get("max")

# --- general: ONNX image classifier; Pillow decodes and preprocesses as the manifest declares
general_dir, general_manifest = bundle("general")
opts = ort.SessionOptions()
opts.intra_op_num_threads = 1  # one CPU per worker (ORT's default thread pool would spin on the same core)
general = ort.InferenceSession(os.path.join(general_dir, "model.onnx"), opts, providers=["CPUExecutionProvider"])
GENERAL_INPUT = general.get_inputs()[0].name
GENERAL_LABELS = general_manifest["labels"]
img = general_manifest["options"]["image"]
IMG_SIZE = tuple(img["size"])  # [width, height]
IMG_MEAN = np.array(img["mean"], dtype=np.float32)
IMG_STD = np.array(img["std"], dtype=np.float32)
IMG_SCALE = np.float32(img["scale"])

app = Flask(__name__)


@app.route("/models/iris/predict", methods=["POST"])
def predict_iris():
    data = request.get_json(force=True)
    x = np.array([[float(data["length"]), float(data["width"])]])
    y = iris.predict(x)[0]
    return jsonify({"prediction": IRIS_LABELS[int(y)]})


@app.route("/models/diabetes/predict", methods=["POST"])
def predict_diabetes():
    data = request.get_json(force=True)
    x = np.array([[float(data["bmi"])]])
    return jsonify({"prediction": float(diabetes.predict(x)[0])})


@app.route("/models/reviews/predict", methods=["POST"])
def predict_reviews():
    data = request.get_json(force=True)
    features = vectorizer.transform([data["text"]])
    y = float(np.clip(reviews.predict(features)[0], REVIEWS_MIN, REVIEWS_MAX))
    return jsonify({"prediction": y})


@app.route("/models/general/predict", methods=["POST"])
def predict_general():
    data = request.get_json(force=True)
    image = Image.open(io.BytesIO(base64.b64decode(data["image_data"])))
    image = image.convert(img["mode"]).resize(IMG_SIZE, Image.Resampling.BILINEAR)
    x = (np.asarray(image, dtype=np.float32) * IMG_SCALE - IMG_MEAN) / IMG_STD
    x = x.transpose(2, 0, 1)[None]  # HWC -> NCHW
    probs = general.run(None, {GENERAL_INPUT: x})[0][0]
    return jsonify({
        "prediction": GENERAL_LABELS[int(np.argmax(probs))],
        "probabilities": {label: float(p) for label, p in zip(GENERAL_LABELS, probs)},
    })


@app.route("/health", methods=["GET"])
def health():
    return jsonify({"status": "ok"})
