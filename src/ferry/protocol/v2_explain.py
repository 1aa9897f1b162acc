"""Explanations on Open Inference v2, REST and gRPC alike: ``"parameters": {"explain": true}`` on an infer request.

The answer holds the prediction's outputs as usual, then three more:

- ``contributions`` FP64 ``[rows, features]`` where the model has one raw score (regression, binary), or
  ``[rows, classes, features]`` (multiclass): each input column's share of the raw (margin) score;
- ``expected_value`` FP64 ``[1]`` or ``[classes]``: the baseline, so ``expected_value + Σ contributions`` is
  the raw score of each row;
- ``contribution_features`` BYTES ``[features]``: the columns' names, in the contributions' last axis order;

(a sampled estimate, ``ferry serve --explain-sampled``, adds ``contribution_standard_errors`` FP64, shaped as
``contributions``), and the response parameters ``explain_method`` (``tree_shap``, ``linear``,
``sampling_shapley``), ``explain_link`` (``identity``,
``logit``, ``softmax``...) and, for a binary model, ``explain_positive_class``. Classes are in the order of the
model's labels (its probability columns). A model without an exact explanation answers the 501 (gRPC
UNIMPLEMENTED) naming the models that have one, as the native ``/explain`` route does.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ferry.errors import InvalidInput
from ferry.protocol import v2
from ferry.protocol.tensors import Tensor
from ferry.runtimes.explain import Explanation
from ferry.serving.registry import ModelHandle

PARAMETER = "explain"
OUTPUTS = ("contributions", "expected_value", "contribution_features")


def wants_explanation(request: v2.InferRequest, where: str = "$.parameters.explain") -> bool:
    """``parameters.explain``: true asks for the explanation; absent or false, a plain prediction."""
    flag = request.parameters.get(PARAMETER) if request.parameters else None
    if flag is None or flag is False:
        return False
    if flag is not True:
        raise InvalidInput(f"Expected `bool`, got `{type(flag).__name__}`", where)
    return True


def explained_outputs(
    explanation: Explanation, handle: ModelHandle, request: v2.InferRequest
) -> tuple[list[Tensor], dict[str, Any]]:
    """The prediction's outputs (as the request asks for them), the three explanation outputs, and the
    response parameters."""
    tensors = v2.to_outputs(explanation.prediction, handle, request)
    contributions = np.ascontiguousarray(explanation.contributions, dtype=np.float64)
    if explanation.outputs is None:  # one score column: [rows, features]
        contributions = contributions[:, 0, :]
    names = np.empty(len(explanation.features), dtype=object)
    names[:] = [str(f) for f in explanation.features]
    expected = np.asarray(explanation.expected_value, dtype=np.float64).reshape(-1)
    tensors += [
        Tensor("contributions", "FP64", list(contributions.shape), contributions),
        Tensor("expected_value", "FP64", list(expected.shape), expected),
        Tensor("contribution_features", "BYTES", [len(names)], names),
    ]
    if explanation.standard_error is not None:  # a sampled estimate's, shaped as its contributions
        errors = np.ascontiguousarray(explanation.standard_error, dtype=np.float64)
        errors = errors[:, 0, :] if explanation.outputs is None else errors
        tensors.append(Tensor("contribution_standard_errors", "FP64", list(errors.shape), errors))
    parameters: dict[str, Any] = {"explain_method": explanation.method, "explain_link": explanation.link}
    if explanation.positive is not None:
        parameters["explain_positive_class"] = str(explanation.positive)
    return tensors, parameters
