"""Training statistics of feature inputs, and drift against them (population stability index).

``training_stats`` runs at build time, when the training data is at hand: per feature, the
quantiles and a histogram over deciles of the training values, kept in the bundle's metadata.
``psi`` compares values seen in production with that histogram. Only numpy is used here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

BINS = 10
QUANTILES = (0.0, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 1.0)
EPSILON = 1e-4  # floor for an empty bin's share, so the log ratio stays finite
# Common reading of the PSI: below 0.1 no shift, 0.1-0.25 a moderate one, above 0.25 a major one.
PSI_MODERATE, PSI_MAJOR = 0.1, 0.25


def training_stats(data: Any, features: Sequence[str]) -> dict[str, Any]:
    """Per numeric feature: count, mean, std, quantiles, and a decile histogram (edges and shares); per text
    feature (``categories``): each value's share of the rows (a one-hot column's training mean, which
    explanations of a linear model over it start from)."""
    table = np.asarray(data.to_numpy() if hasattr(data, "to_numpy") else data, dtype=object)
    if table.ndim != 2 or table.shape[1] != len(features):
        raise ValueError(f"training data must have one column per feature ({len(features)}), got shape {table.shape}")
    stats: dict[str, Any] = {}
    categories: dict[str, dict[str, float]] = {}
    for index, name in enumerate(features):
        try:
            column = table[:, index].astype(float)
        except (TypeError, ValueError):  # a string feature: no numeric drift statistics, its categories' shares
            values, counts = np.unique(table[:, index].astype(str), return_counts=True)
            categories[name] = {str(v): float(c) / table.shape[0] for v, c in zip(values, counts, strict=True)}
            continue
        column = column[np.isfinite(column)]
        if column.size == 0:
            continue
        edges = np.unique(np.quantile(column, np.linspace(0.0, 1.0, BINS + 1)))
        shares = _shares(column, edges)
        stats[name] = {
            "count": int(column.size),
            "mean": float(column.mean()),
            "std": float(column.std()),
            "quantiles": {str(q): float(v) for q, v in zip(QUANTILES, np.quantile(column, QUANTILES), strict=True)},
            "histogram": {"edges": edges.tolist(), "shares": shares.tolist()},
        }
    return {"rows": int(table.shape[0]), "features": stats, "categories": categories}


def _shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Share of values per bin; the outer bins are open, so values beyond the training range still count."""
    if edges.size < 2:
        return np.ones(1)
    inner = edges[1:-1]
    counts = np.bincount(np.searchsorted(inner, values, side="right"), minlength=edges.size - 1)
    return counts / max(values.size, 1)


def psi(histogram: dict[str, Any], values: Sequence[float] | np.ndarray) -> float:
    """Population stability index of ``values`` against a training histogram from ``training_stats``."""
    edges = np.asarray(histogram["edges"], dtype=float)
    expected = np.maximum(np.asarray(histogram["shares"], dtype=float), EPSILON)
    observed = np.maximum(_shares(np.asarray(values, dtype=float), edges), EPSILON)
    return float(np.sum((observed - expected) * np.log(observed / expected)))


def verdict(value: float) -> str:
    if value >= PSI_MAJOR:
        return "major"
    return "moderate" if value >= PSI_MODERATE else "none"
