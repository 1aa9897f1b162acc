"""schemathesis hooks for tests/test_openapi.py (loaded through ``SCHEMATHESIS_HOOKS``).

The one rule of Ferry's request validation that OpenAPI's JSON Schema cannot state: rows of a
tensor input whose width is free (``-1``) must all have one length. The document says so in words;
this hook keeps generated bodies to rows of one length, so that every other rule is checked both
ways (schema-valid bodies accepted, schema-violating ones refused). Nothing else is filtered.
"""

from __future__ import annotations

from typing import Any

import schemathesis


def ragged(value: Any) -> bool:
    """Whether ``value`` holds rows (arrays, or one key of records) of different lengths, at any depth."""
    if isinstance(value, dict):
        return any(ragged(v) for v in value.values())
    if not isinstance(value, list):
        return False
    if len(value) > 1 and all(isinstance(v, list) for v in value) and len({_dims(v) for v in value}) > 1:
        return True
    if len(value) > 1 and all(isinstance(v, dict) for v in value):
        for key in {k for v in value for k in v}:
            lengths = {len(v[key]) if isinstance(v.get(key), list) else -1 for v in value}
            if len(lengths) > 1 and -1 not in lengths:
                return True
    return any(ragged(v) for v in value)


def _dims(value: Any) -> tuple[int, ...]:
    """The lengths down the first items of nested arrays: ``[[1, 2]]`` is (1, 2)."""
    dims = []
    while isinstance(value, list):
        dims.append(len(value))
        value = value[0] if value else None
    return tuple(dims)


@schemathesis.hook
def filter_case(context: Any, case: Any) -> bool:
    return not ragged(case.body)
