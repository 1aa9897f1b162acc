"""XGBoost's link functions, computed as XGBoost computes them: in float32, with the C library's ``expf``.

XGBoost answers in float32: ``1 / (1 + expf(-x))`` for logistic objectives, ``expf(x)`` for Poisson, Gamma
and Tweedie, and a softmax of ``expf(x - max)`` whose sum is kept in a double. numpy's float32 ``exp``
rounds differently (and differently per CPU), and so does ``float32(exp(double))`` on about one value in
1,600, so each value goes through the same ``expf`` XGBoost's library calls, through ctypes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
from collections.abc import Callable
from typing import Any

import numpy as np


@functools.cache
def _libm() -> Any:
    name = "libm.so.6" if sys.platform.startswith("linux") else ctypes.util.find_library("m")
    library = ctypes.CDLL(name)
    for function in (library.expf, library.logf):
        function.restype, function.argtypes = ctypes.c_float, [ctypes.c_float]
    return library


def expf(values: np.ndarray) -> np.ndarray:
    """``expf`` of every value (rounded to float32 first), through the C library."""
    flat = np.asarray(values, dtype=np.float32).ravel().tolist()
    out = np.fromiter(map(_libm().expf, flat), dtype=np.float32, count=len(flat))
    return out.reshape(np.shape(values))


def logf(value: float | np.floating[Any]) -> np.float32:
    return np.float32(_libm().logf(float(np.float32(value))))


def sigmoid32(scores: np.ndarray) -> np.ndarray:
    """XGBoost's ``binary:logistic``: the probability of the second class, [rows], float32."""
    flat = np.asarray(scores[:, 0] if scores.ndim == 2 else scores, dtype=np.float32)
    one = np.float32(1.0)
    result: np.ndarray = one / (one + expf(-flat))
    return result


def exp32(scores: np.ndarray) -> np.ndarray:
    flat = np.asarray(scores[:, 0] if scores.ndim == 2 else scores, dtype=np.float32)
    return expf(flat)


def softmax32(scores: np.ndarray) -> np.ndarray:
    """XGBoost's ``multi:softprob``: ``expf(x - max)`` over a row, summed in a double left to right."""
    x = np.asarray(scores, dtype=np.float32)
    shifted = expf(x - x.max(axis=1, keepdims=True))
    total = shifted[:, 0].astype(np.float64)
    for column in range(1, shifted.shape[1]):
        total += shifted[:, column]
    result: np.ndarray = shifted / total.astype(np.float32)[:, None]
    return result


FLOAT32_LINKS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "sigmoid32": sigmoid32,
    "exp32": exp32,
    "softmax32": softmax32,
}
