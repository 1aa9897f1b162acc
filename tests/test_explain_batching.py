"""Explanations batched like predictions (issue 23), in process: ``InferenceService.explain`` merges concurrent
requests' rows into one explanation call and cuts it back per request, under the predictions' bounds: the
deadline (504, counted), the queue bound (503, counted), ``--max-rows``, and a request whose client has gone is
never computed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ferry.errors import DeadlineExceeded, Overloaded, PayloadTooLarge
from ferry.runtimes.explain import Explanation
from ferry.serving.metrics import Metrics
from ferry.serving.registry import ModelHandle, ModelRegistry
from ferry.serving.service import InferenceService


class Explainer:
    """The iris model's own explanation, recording the rows of every call, each call taking ``delay`` s."""

    def __init__(self, handle: ModelHandle, delay: float) -> None:
        assert handle.model is not None
        self.explain = handle.model.runtime.explain  # type: ignore[attr-defined]
        self.delay, self.calls = delay, []

    def __call__(self, batch: Any) -> Explanation:
        self.calls.append(np.asarray(batch).tolist())
        time.sleep(self.delay)
        found: Explanation = self.explain(batch)
        return found


@pytest.fixture
def iris(example_repo: Path) -> Iterator[tuple[ModelHandle, Metrics, ModelRegistry]]:
    registry = ModelRegistry(example_repo)
    registry.load(registry.models["iris"]["1"])
    yield registry.get("iris"), Metrics(), registry


def _sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, {"model": "iris", "version": "1", **labels})
    return value or 0.0


def test_concurrent_requests_share_one_call_and_each_gets_its_rows(iris: Any) -> None:
    handle, metrics, registry = iris
    service = InferenceService(registry, metrics)
    explainer = Explainer(handle, 0.05)
    requests = [np.asarray([[5.0 + i, 1.0 + j / 10] for j in range(1 + i % 3)]) for i in range(9)]

    async def run() -> list[Explanation]:
        first = asyncio.ensure_future(service.explain(handle, requests[0], explainer, 5.0))
        await asyncio.sleep(0.01)  # the first call computing: the rest queue behind it and go in one
        rest = await asyncio.gather(*(service.explain(handle, rows, explainer, 5.0) for rows in requests[1:]))
        return [await first, *rest]

    answers = asyncio.run(run())
    assert [len(call) for call in explainer.calls] == [1, sum(len(r) for r in requests[1:])]
    for rows, answer in zip(requests, answers, strict=True):
        alone = explainer.explain(rows)
        np.testing.assert_array_equal(answer.contributions, alone.contributions)
        np.testing.assert_array_equal(answer.score, alone.score)
        total = answer.expected_value + answer.contributions.sum(axis=2)
        np.testing.assert_allclose(total, answer.score, rtol=1e-12, atol=1e-12)  # adds up per request
    assert _sample(metrics, "ferry_explain_batch_size_rows_count") == 2
    assert _sample(metrics, "ferry_explain_batch_size_rows_sum") == sum(len(r) for r in requests)
    service.close()


def test_deadline_queue_bound_rows_and_a_gone_client_as_predictions_have(iris: Any) -> None:
    handle, metrics, registry = iris
    service = InferenceService(registry, metrics, max_queue=3, max_rows=3)
    explainer = Explainer(handle, 0.3)
    rows = np.asarray([[5.0, 1.0]])

    async def run() -> None:
        busy = asyncio.ensure_future(service.explain(handle, rows, explainer, 5.0))
        await asyncio.sleep(0.05)  # computing for 0.3 s
        with pytest.raises(DeadlineExceeded):
            await service.explain(handle, rows + 1, explainer, 0.05)
        gone = asyncio.ensure_future(service.explain(handle, rows + 2, explainer, 5.0))
        waiting = asyncio.ensure_future(service.explain(handle, rows + 3, explainer, 5.0))
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded):  # three queued: the one past its deadline stays, to be skipped
            await service.explain(handle, rows + 4, explainer, 5.0)
        with pytest.raises(PayloadTooLarge):
            await service.explain(handle, np.repeat(rows, 4, axis=0), explainer, 5.0)
        gone.cancel()  # the client hung up
        await busy
        await waiting

    asyncio.run(run())
    assert explainer.calls == [[[5.0, 1.0]], [[8.0, 4.0]]]  # neither the late request nor the gone one computed
    assert _sample(metrics, "ferry_deadline_misses_total") == 1
    assert _sample(metrics, "ferry_rejections_total") == 1
    service.close()
