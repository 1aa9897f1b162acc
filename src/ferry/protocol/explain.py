"""Explanations on the wire: Ferry's native ``/explain`` body and KServe v1's ``:explain`` answer.

A row's contributions map each input column to its share of the raw score (``expected_value +
Σ contributions = raw_score``); a classifier with several score columns is keyed by class label.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ferry.protocol.codecs import Answer, KServeCodec, NativeCodec, json_answer
from ferry.runtimes.explain import Explanation
from ferry.serving.registry import ModelHandle


def by_output(explanation: Explanation, values: np.ndarray) -> Any:
    """[outputs] values as a number (one output) or by class label."""
    if explanation.outputs is None:
        return float(values[0])
    return dict(zip(explanation.outputs, values.tolist(), strict=True))


def row_contributions(explanation: Explanation) -> list[Any]:
    """Per row: ``{feature: value}``, or ``{label: {feature: value}}``.

    A text row names the columns its n-grams fill by those n-grams; the columns of n-grams it lacks
    (their absence counts too) are summed under ``ABSENT``, so the row still adds up to its score.
    """
    rows: list[Any] = []
    values = explanation.contributions
    for index in range(values.shape[0]):
        per_output = [_named(explanation, index, values[index, k]) for k in range(values.shape[1])]
        rows.append(
            per_output[0] if explanation.outputs is None else dict(zip(explanation.outputs, per_output, strict=True))
        )
    return rows


ABSENT = "(n-grams absent from the text)"


def _named(explanation: Explanation, index: int, values: np.ndarray) -> dict[str, float]:
    if explanation.row_features is None:
        return dict(zip(explanation.features, values.tolist(), strict=True))
    names = explanation.row_features[index]
    present = dict(zip(names.values(), values[list(names)].tolist(), strict=True))
    present[ABSENT] = float(values.sum() - values[list(names)].sum())
    return present


def describe(explanation: Explanation) -> dict[str, Any]:
    body: dict[str, Any] = {
        "expected_value": by_output(explanation, explanation.expected_value),
        "link": explanation.link,
        "method": explanation.method,
    }
    if explanation.positive is not None:
        body["positive_class"] = explanation.positive
    return body


def row_errors(explanation: Explanation) -> list[Any] | None:
    """An estimate's standard errors (``sampling_shapley``), per row shaped as its contributions; else None."""
    if explanation.standard_error is None:
        return None
    return row_contributions(
        Explanation(
            explanation.standard_error,
            explanation.expected_value,
            explanation.score,
            explanation.features,
            explanation.method,
            explanation.link,
            explanation.outputs,
        )
    )


def native_body(explanation: Explanation) -> dict[str, Any]:
    body: dict[str, Any] = {"contributions": row_contributions(explanation), **describe(explanation)}
    errors = row_errors(explanation)
    if errors is not None:
        body["standard_errors"] = errors
    body["raw_scores"] = [by_output(explanation, row) for row in explanation.score]
    if explanation.prediction is not None:
        body["predictions"] = explanation.prediction.values
    return body


def kserve_body(explanation: Explanation) -> dict[str, Any]:
    """KServe v1's ``{"predictions": [...], "explanations": [...]}``, one explanation per instance."""
    head = describe(explanation)
    explanations = [
        {"contributions": contributions, "raw_score": by_output(explanation, score), **head}
        for contributions, score in zip(row_contributions(explanation), explanation.score, strict=True)
    ]
    for explained, errors in zip(explanations, row_errors(explanation) or [], strict=False):
        explained["standard_errors"] = errors
    predictions = explanation.prediction.values if explanation.prediction is not None else []
    return {"predictions": predictions, "explanations": explanations}


class NativeExplainCodec(NativeCodec):
    """``POST /models/{name}/explain``: what predict takes, the contributions back."""

    route = "model/explain"

    def encode(self, prediction: Any, handle: ModelHandle, context: Any) -> Answer:
        return json_answer(native_body(prediction))


class KServeExplainCodec(KServeCodec):
    """KServe v1 ``POST /v1/models/{name}:explain``."""

    route = "v1:explain"

    def encode(self, prediction: Any, handle: ModelHandle, context: Any) -> Answer:
        return json_answer(kserve_body(prediction))


EXPLAIN_CODECS = {"native": NativeExplainCodec(), "kserve": KServeExplainCodec()}
