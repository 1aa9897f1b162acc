"""The plain peer: FastAPI + uvicorn serving the same iris model as Ferry's example bundle.

POST /predict {"length": 5.1, "width": 2.4} -> {"prediction": "virginica"};  GET /health -> {"health": "ok"}
IRIS_MODEL: a joblib file of the bundle's fitted estimator (bench/reliability.py writes it).
Run: uvicorn fastapi_iris:app --loop uvloop --http httptools --no-access-log
(after /work/shared/bench/peers/fastapi-uvicorn/app.py: `def` endpoints, run in Starlette's thread pool)
"""

import os

import joblib
import numpy as np
from fastapi import FastAPI
from pydantic import BaseModel

model = joblib.load(os.environ["IRIS_MODEL"])
LABELS = ["setosa", "versicolor", "virginica"]
app = FastAPI()


class Iris(BaseModel):
    length: float
    width: float


@app.post("/predict")
def predict(item: Iris) -> dict[str, str]:
    return {"prediction": LABELS[int(model.predict(np.array([[item.length, item.width]]))[0])]}


@app.get("/health")
async def health() -> dict[str, str]:
    return {"health": "ok"}
