"""Train and bundle each reference example; every one is deterministic and takes under a few seconds."""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from ferry.builder import build
from ferry.bundle.repository import scan_repository
from ferry.examples.images import build_general, build_plants

REVIEW_FEATURIZER = {
    "type": "char_ngrams",
    "analyzer": "char_wb",
    "ngram_range": [1, 3],
    "n_features": 2**14,
    "alternate_sign": False,
    "norm": "l2",
    "lowercase": True,
}


def build_iris(repo: Path) -> Path:
    """The talk's recipe: petal length/width, StandardScaler + Perceptron, split 70/30 with seed 0."""
    from sklearn.datasets import load_iris
    from sklearn.linear_model import Perceptron
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    iris = load_iris()
    x, y = iris.data[:, [2, 3]], iris.target
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, random_state=0)
    model = Pipeline(
        [
            ("scaler", StandardScaler()),
            ("perceptron", Perceptron(max_iter=40, eta0=0.1, random_state=0, shuffle=True)),
        ]
    ).fit(x_train, y_train)
    accuracy = float((model.predict(x_test) == y_test).mean())
    return build(
        model,
        "iris",
        repo,
        version="1",
        features=["length", "width"],
        training_data=x_train,
        labels=[str(n) for n in iris.target_names],
        sample_input={"length": 5.1, "width": 2.4},
        metadata={
            "metrics": {"accuracy": round(accuracy, 4), "test_rows": len(y_test)},
            "description": "Iris species from petal length and width (cm)",
        },
        routes=[
            {"method": "POST", "path": "/predict", "response_key": "prediction"},
            {
                "method": "POST",
                "path": "/predict_batch",
                "input": {"source": "body_key", "key": "rows"},
                "response_key": "predictions",
            },
        ],
    )


def build_diabetes(repo: Path) -> Path:
    """Linear regression on the diabetes data set's BMI column, fitted on all 442 rows."""
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import LinearRegression

    data = load_diabetes()
    x, y = data.data[:, [2]], data.target
    model = LinearRegression().fit(x, y)
    return build(
        model,
        "diabetes",
        repo,
        version="1",
        features=["bmi"],
        training_data=x,
        sample_input={"bmi": 0.05},
        metadata={
            "metrics": {"r2": round(float(model.score(x, y)), 4)},
            "description": "Disease progression after one year from (scaled) BMI",
        },
        routes=[
            {"method": "GET", "path": "/isAlive", "action": "health", "response_key": None},
            {
                "method": "GET",
                "path": "/prediction/",
                "input": {"source": "query", "names": {"f": "bmi"}},
                "response_key": None,
            },
        ],
    )


def build_score(repo: Path) -> Path:
    """The identity test API: ``POST /score {"X": [1, 2]}`` answers ``{"score": [1, 2]}``."""
    from ferry.examples.identity import Identity

    return build(
        Identity,
        "score",
        repo,
        version="1",
        input_schema={"kind": "tensor", "tensors": [{"name": "X", "dtype": "float64", "shape": [-1, -1]}]},
        output_schema={"kind": "tensor", "dtype": "float64", "shape": [-1, -1]},
        sample_input=[1, 2],
        metadata={"description": "Identity: returns its input"},
        routes=[
            {"method": "POST", "path": "/score", "input": {"source": "body_key", "key": "X"}, "response_key": "score"}
        ],
    )


def load_reviews(filename: str = "reviews_ja.jsonl") -> list[dict[str, Any]]:
    text = resources.files("ferry.examples").joinpath("data", filename).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def build_reviews(repo: Path) -> Path:
    """LightGBM star rating of Japanese movie reviews from hashed character n-grams (no tokenizer)."""
    import lightgbm
    import numpy as np

    from ferry.runtimes.lightgbm import make_featurizer

    corpus = load_reviews()
    texts = [r["text"] for r in corpus]
    stars = np.asarray([r["stars"] for r in corpus], dtype=float)
    features = make_featurizer(REVIEW_FEATURIZER).transform(texts)
    model = lightgbm.LGBMRegressor(
        n_estimators=200,
        learning_rate=0.05,
        num_leaves=15,
        min_child_samples=5,
        random_state=0,
        deterministic=True,
        force_row_wise=True,
        n_jobs=1,
        verbose=-1,
    ).fit(features, stars)
    mae = float(np.abs(np.clip(model.predict(features), 1, 5) - stars).mean())
    return build(
        model,
        "reviews",
        repo,
        version="1",
        input_schema={"kind": "text", "field": "text", "max_length": 10_000},
        output_schema={"kind": "number", "min": 1.0, "max": 5.0},
        sample_input={"text": "最高の映画でした！もう一度観たいです。"},
        options={"featurizer": REVIEW_FEATURIZER},
        metadata={
            "metrics": {"train_mae": round(mae, 4), "train_rows": len(corpus)},
            "description": "Star rating (1-5) of a Japanese movie review",
        },
    )


EXAMPLES: dict[str, Callable[[Path], Path]] = {
    "iris": build_iris,
    "diabetes": build_diabetes,
    "score": build_score,
    "reviews": build_reviews,
}
# The image-classifier reference (ferry.examples.images), served on its own: both declare `POST /predict`.
IMAGE_EXAMPLES: dict[str, Callable[[Path], Path]] = {"general": build_general, "plants": build_plants}


def build_examples(repo: Path, names: list[str] | None = None) -> list[Path]:
    """Build each example that ``repo`` does not hold yet; return the bundle folders built."""
    existing = scan_repository(repo)
    builders = {**EXAMPLES, **IMAGE_EXAMPLES}
    built = []
    for name in names or list(EXAMPLES):
        if name not in existing:
            built.append(builders[name](repo))
    return built
