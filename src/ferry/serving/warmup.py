"""Warm-up: a version is READY only once its bundle's sample input has gone through the model.

The sample is written in the native protocol, which sits above serving: the composing layer hands
its decoder and answer in (``native_warm_up`` in ``ferry.protocol.native``), so serving imports no codec.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

from ferry.bundle.expect import expectation_problem
from ferry.errors import FerryError, ModelWarmupFailed
from ferry.runtimes import Prediction
from ferry.runtimes.base import clipped
from ferry.serving.inputs import InputCodec
from ferry.serving.registry import ModelHandle

SampleDecoder = Callable[[Any, InputCodec], tuple[Any, bool]]  # (payload, codec) -> (batch, single)
SampleAnswer = Callable[[Prediction, bool, list[str] | None], Any]  # what the client gets, as expected_output is
WarmUp = Callable[[ModelHandle], None]


def sample_warm_up(decode: SampleDecoder, answer: SampleAnswer) -> WarmUp:
    """The registry's warm-up, for samples in the protocol that ``decode`` and ``answer`` speak.

    A partial of module-level functions, so it pickles: a trial load in a child process
    (``ferry.serving.trial``) runs the very same warm-up.
    """
    return functools.partial(_warm_up, decode, answer)


def _warm_up(decode: SampleDecoder, answer: SampleAnswer, handle: ModelHandle) -> None:
    """Run the bundle's sample input through the model once, timing the call; raise if it fails."""
    assert handle.model is not None and handle.codec is not None
    manifest = handle.model.manifest
    if manifest.sample_input is None:
        return
    try:
        batch, single = decode(manifest.sample_input, handle.codec)
        started = time.perf_counter()
        prediction = clipped(handle.model.runtime.predict, manifest.output)(batch)  # the batcher's own call
        handle.compute_s = time.perf_counter() - started
        if manifest.expected_output is not None:  # the builder's checked answer: a changed environment must not drift
            problem = expectation_problem(manifest.expected_output, answer(prediction, single, manifest.labels))
            if problem:
                raise ModelWarmupFailed(f"the sample input answers wrong: {problem}")
    except ModelWarmupFailed:
        raise
    except FerryError as exc:
        raise ModelWarmupFailed(f"warm-up on the sample input failed: {exc.message}") from exc
    except Exception as exc:
        raise ModelWarmupFailed(f"warm-up on the sample input failed: {type(exc).__name__}: {exc}") from exc
