"""A bundle's expected answer to its sample input, compared at build, at warm-up and by ``ferry check``.

It belongs to the bundle (the manifest's ``expected_output``), so every layer above may use it;
standard library only: the load-test client imports it too.
"""

from __future__ import annotations

import json
import math
from typing import Any


def expectation_problem(expected: Any, got: Any) -> str | None:
    """``expected setosa, got versicolor`` when the answer differs (numbers to a relative 1e-6), else None."""
    if _same(expected, got):
        return None
    shown, seen = _show(expected), _show(got)
    if shown == seen:  # 1 against "1": the same text, not the same value
        shown, seen = f"{json.dumps(expected)} ({_kind(expected)})", f"{json.dumps(got)} ({_kind(got)})"
    return f"expected {shown}, got {seen}"


def _kind(value: Any) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list", dict: "an object"}
    return names.get(type(value), type(value).__name__)


def _same(expected: Any, got: Any) -> bool:
    if isinstance(expected, int | float) and isinstance(got, int | float) and not isinstance(expected, bool):
        return math.isclose(expected, got, rel_tol=1e-6, abs_tol=1e-9)
    if isinstance(expected, list) and isinstance(got, list):
        return len(expected) == len(got) and all(_same(e, g) for e, g in zip(expected, got, strict=True))
    if isinstance(expected, dict) and isinstance(got, dict):
        return expected.keys() == got.keys() and all(_same(v, got[k]) for k, v in expected.items())
    return bool(expected == got)


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)
