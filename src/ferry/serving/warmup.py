"""Warm-up: a version is READY only once its bundle's sample input has gone through the model."""

from __future__ import annotations

import time

from ferry.errors import FerryError, ModelWarmupFailed
from ferry.protocol.expect import expectation_problem
from ferry.protocol.native import decode_native, encode_native
from ferry.serving.registry import ModelHandle


def warm_up(handle: ModelHandle) -> None:
    """Run the bundle's sample input through the model once, timing the call; raise if it fails."""
    assert handle.model is not None and handle.codec is not None
    sample = handle.model.manifest.sample_input
    if sample is None:
        return
    try:
        batch, single = decode_native(sample, handle.codec)
        started = time.perf_counter()
        prediction = handle.model.runtime.predict(batch)
        handle.compute_s = time.perf_counter() - started
        expected = handle.model.manifest.expected_output
        if expected is not None:  # the answer the builder checked: a changed environment must not drift from it
            body = encode_native(prediction, single, handle.model.manifest.labels)
            problem = expectation_problem(expected, body["prediction"] if single else body["predictions"])
            if problem:
                raise ModelWarmupFailed(f"the sample input answers wrong: {problem}")
    except ModelWarmupFailed:
        raise
    except FerryError as exc:
        raise ModelWarmupFailed(f"warm-up on the sample input failed: {exc.message}") from exc
    except Exception as exc:
        raise ModelWarmupFailed(f"warm-up on the sample input failed: {type(exc).__name__}: {exc}") from exc
