"""The Flask peer of bench/tabular.py: the mixed-type pipeline served as a user writes it by hand.

POST /predict {"sex": "female", "pclass": 1, "age": 29.0, "embarked": "S"}
  -> {"prediction": 1, "probabilities": {"0": 0.1, "1": 0.9}}      (the same answer as Ferry's native route)
TABULAR_MODEL: the joblib file of the fitted Pipeline (bench/tabular.py writes it).
Run: gunicorn -w 1 -k sync -b 127.0.0.1:PORT tabular_flask:app
"""

import os

import joblib
import pandas as pd
from flask import Flask, jsonify, request

model = joblib.load(os.environ["TABULAR_MODEL"])
COLUMNS = list(model.feature_names_in_)
CLASSES = [c.item() for c in model.classes_]
app = Flask(__name__)


@app.post("/predict")
def predict():
    body = request.get_json()
    rows = body if isinstance(body, list) else [body]
    frame = pd.DataFrame(rows, columns=COLUMNS)
    labels = model.predict(frame).tolist()
    probabilities = [dict(zip(map(str, CLASSES), p, strict=True)) for p in model.predict_proba(frame).tolist()]
    if isinstance(body, list):
        return jsonify({"predictions": labels, "probabilities": probabilities})
    return jsonify({"prediction": labels[0], "probabilities": probabilities[0]})


@app.get("/health")
def health():
    return jsonify({"health": "ok"})
