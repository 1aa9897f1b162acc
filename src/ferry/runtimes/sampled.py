"""A bounded, opt-in estimate of Shapley values for a model Ferry cannot explain exactly (a Python class, ONNX).

The operator turns it on per model at serve time (``--explain-sampled NAME``); a bundle cannot ask for it,
since its cost (model rows per explained row) is the operator's to pay. It estimates the interventional
Shapley value of each input column against a background of training rows stored at build
(``ferry.build(..., training_data=...)`` keeps up to ``BACKGROUND_ROWS`` of them, evenly spaced):

    φ_i(x) = E_{b, π} [ f(x on the columns before i in π and i, b elsewhere) - f(x on those before i, b elsewhere) ]

over background rows ``b`` and orders ``π`` of the columns (Štrumbelj and Kononenko, 2014). Each of ``M``
samples walks one random order from ``b_m`` (the background rows in turn) to ``x``, one column at a time:
``F + 1`` model rows, all sent in one call per explained row, within ``SAMPLE_ROWS``. ``f`` is what the
model answers as numbers: its class probabilities where it gives them, else its numeric answer. Each
walk's steps add up to ``f(x) - f(b_m)``, so ``expected_value`` (the mean of ``f(b_m)`` over the rows
walked from) plus the contributions is ``f(x)`` exactly; each contribution's standard error is the
standard deviation of its ``M`` steps over ``√M`` (0 for a model additive in its columns).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ferry.runtimes.explain import Explanation, NotExplainable

BACKGROUND_FILE = "explain-background.json"
BUILD_WITH_ROWS = "build it with --training-data FILE (ferry.build(..., training_data=...) in Python)"
BACKGROUND_ROWS = 64
SAMPLE_ROWS = 1024  # model rows per explained row
METHOD = "sampling_shapley"


def background_rows(data: Any) -> list[list[Any]]:
    """Up to ``BACKGROUND_ROWS`` training rows, evenly spaced, as JSON values (what the build stores)."""
    table = np.asarray(data.to_numpy(dtype=object) if hasattr(data, "to_numpy") else data, dtype=object)
    if table.ndim != 2 or not table.shape[0]:
        return []
    picked = table[np.unique(np.linspace(0, table.shape[0] - 1, BACKGROUND_ROWS).astype(int))]
    text = json.dumps(picked.tolist(), default=lambda v: v.item() if hasattr(v, "item") else str(v))
    rows: list[list[Any]] = json.loads(text)
    return rows


def write_background(folder: Path, data: Any) -> str | None:
    """Writes the background file into a bundle being built; its name, or None without rows."""
    rows = background_rows(data)
    if not rows:
        return None
    (folder / BACKGROUND_FILE).write_text(json.dumps(rows))
    return BACKGROUND_FILE


def sampled_explanation(manifest: Any) -> dict[str, Any]:
    """What a model's metadata says of its explanation when the operator named it (``--explain-sampled``): the
    method and link its answers carry, its budget (model rows per explained row, in ``samples`` walks) and that
    each contribution comes with its standard error; or why it cannot be (no feature rows, no background)."""
    if manifest.input.kind != "features":
        return {"unavailable": "sampled explanations take feature rows"}
    if BACKGROUND_FILE not in manifest.artifacts:
        return {"unavailable": f"the bundle has no background rows: {BUILD_WITH_ROWS}"}
    features = len(manifest.input.features)
    return {
        "method": METHOD,
        "link": "identity",
        "sampled": True,
        "model_rows_per_row": SAMPLE_ROWS,
        "samples": _samples(SAMPLE_ROWS, features),
        "standard_errors": True,
    }


def _samples(rows: int, features: int) -> int:
    """Walks per explained row: each is ``features + 1`` model rows, within ``rows``."""
    return max(2, rows // (features + 1))


class SampledShapley:
    """Explains a model's rows by permutation sampling against its stored background (see the module)."""

    def __init__(
        self,
        predict: Callable[[Any], Any],
        background: list[list[Any]],
        names: list[str],
        labels: list[Any] | None = None,
        rows: int = SAMPLE_ROWS,
        seed: int = 0,
    ) -> None:
        if not background:
            raise NotExplainable(f"no background rows: {BUILD_WITH_ROWS}")
        self.predict, self.names, self.labels, self.seed = predict, names, labels, seed
        self.background = np.asarray(background, dtype=object)
        self.samples = _samples(rows, len(names))

    @classmethod
    def from_bundle(cls, predict: Callable[[Any], Any], folder: Path, manifest: Any) -> SampledShapley:
        if manifest.input.kind != "features":
            raise NotExplainable("sampled explanations take feature rows")
        path = folder / BACKGROUND_FILE
        if BACKGROUND_FILE not in manifest.artifacts or not path.is_file():
            raise NotExplainable(f"the bundle has no background rows: {BUILD_WITH_ROWS}")
        names = [f.name for f in manifest.input.features]
        return cls(predict, json.loads(path.read_text()), names, manifest.labels)

    def __call__(self, batch: Any) -> Explanation:
        rows = np.asarray(batch)
        found = [self._row(rows[i], i) for i in range(rows.shape[0])]
        values = np.stack([f[0] for f in found]) if found else np.zeros((0, 1, len(self.names)))
        errors = np.stack([f[1] for f in found]) if found else np.zeros_like(values)
        score = np.stack([f[2] for f in found]) if found else np.zeros((0, 1))
        expected = found[0][3] if found else np.zeros(1)
        several = score.shape[1] > 1
        outputs = list(self.labels) if several and self.labels and len(self.labels) == score.shape[1] else None
        if several and outputs is None:
            outputs = [str(k) for k in range(score.shape[1])]
        explanation = Explanation(values, expected, score, self.names, METHOD, "identity", outputs)
        explanation.standard_error = errors
        return explanation

    def _row(self, x: np.ndarray, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """([outputs, F] estimates, their standard errors, [outputs] f(x), [outputs] mean f(b_m))."""
        features, samples = len(self.names), self.samples
        rng = np.random.default_rng(self.seed + index)
        orders = np.argsort(rng.random((samples, features)), axis=1)  # one random order of the columns each
        start = self.background[np.arange(samples) % self.background.shape[0]]  # [M, F]
        # walk[m, k]: b_m with the first k columns of order m taken from x
        taken = np.arange(features + 1)[:, None] > np.argsort(orders, axis=1)[:, None, :]  # [M, F+1, F]
        walk = np.where(taken, x.astype(object)[None, None, :], start[:, None, :])
        flat = walk.reshape(samples * (features + 1), features)
        with contextlib.suppress(TypeError, ValueError):  # numbers as a request sends them; text stays objects
            flat = flat.astype(np.float64)
        f = self._numbers(flat).reshape(samples, features + 1, -1)  # [M, F+1, outputs]
        marginal = np.diff(f, axis=1)  # [M, F, outputs]: the step that took column orders[m, k]
        by_column = np.empty_like(marginal)
        by_column[np.arange(samples)[:, None], orders] = marginal
        estimate = by_column.mean(axis=0).T  # [outputs, F]
        error = by_column.std(axis=0, ddof=1).T / np.sqrt(samples)
        return estimate, error, f[0, -1], f[:, 0].mean(axis=0)

    def _numbers(self, rows: np.ndarray) -> np.ndarray:
        """[rows, outputs]: the model's class probabilities, or its numeric answers."""
        prediction = self.predict(rows)
        probabilities = getattr(prediction, "probabilities", None)
        if probabilities is not None:
            return np.asarray(probabilities, dtype=np.float64).reshape(rows.shape[0], -1)
        try:
            values = np.asarray(prediction.values, dtype=np.float64)
        except (TypeError, ValueError):
            raise NotExplainable("the model answers labels without probabilities: nothing numeric to explain") from None
        return values.reshape(rows.shape[0], -1)
