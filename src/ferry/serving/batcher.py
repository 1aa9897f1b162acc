"""Adaptive batching: concurrent requests to one model merge into one model call.

A request that finds the model idle runs at once. Requests that arrive while a batch is
computing wait in a queue and go together in the next call, up to ``max_batch_size`` rows;
with ``max_wait`` > 0 a batch that is not full waits at most that long (monotonic clock)
for more rows, but only when other requests are already queued. Each caller gets exactly
its own rows back; a failed batch fails every caller in it with the same error.

Admission: past ``max_queue`` waiting requests a new one is refused at once (503 with
Retry-After). Every request has a deadline: when it passes, the caller gets a 504 at once and
the request is skipped when its batch is collected, so the model never computes an answer
nobody will read. A batch whose callers have all gone (past their deadlines, or cancelled:
a gRPC client's cancel) while it waited for the model thread is dropped there, and a runtime's long loop
(decoding images) stops between items once they have (``ferry.runtimes.abandon``). At most one batch
per model computes at a time, so rows in flight are bounded by ``max_batch_size``.

The answer is a ``Prediction`` by default; another answer per row (an ``Explanation``: ``explain`` batches
like ``predict``) comes with its own ``split``, which cuts a batch's answer back into each caller's rows.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, cast

import numpy as np

from ferry.errors import DeadlineExceeded, Overloaded
from ferry.runtimes import Prediction
from ferry.runtimes.abandon import Abandoned, stop_if_abandoned, watching
from ferry.serving.timers import PRECISE_BELOW_S, CoarseTimers

# A batch that computes faster than this runs on the event loop: handing it to a thread would
# cost more than the compute itself. Slower models run in the executor so the loop stays free.
INLINE_COMPUTE_S = 0.0005
R = TypeVar("R")  # what the model call answers for a batch: a Prediction, or an Explanation
Split = Callable[[R, list[int]], list[R]]  # a batch's answer cut into each caller's rows, in order


class BatchObserver(Protocol):
    """Told when the batch a request went in ran (monotonic seconds): how tracing draws the shared batch per request."""

    def batched(self, started: float, ended: float, rows: int, requests: int, failed: bool) -> None: ...


@dataclass
class _Pending(Generic[R]):
    batch: Any
    rows: int
    future: asyncio.Future[R]
    enqueued: float
    observer: BatchObserver | None


class AdaptiveBatcher(Generic[R]):
    def __init__(
        self,
        predict: Callable[[Any], R],
        executor: Executor,
        max_batch_size: int = 256,
        max_wait_s: float = 0.0,
        max_queue: int = 1024,
        on_batch: Callable[[int, int, float, float], None] | None = None,
        compute_s: float | None = None,
        observed: bool = False,
        split: Split[R] | None = None,
    ) -> None:
        self._predict = predict
        self._split: Split[R] = split or cast(Split[R], _split)  # None: R is Prediction
        self._executor = executor
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.in_flight_rows = 0
        self._on_batch = on_batch
        self._observed = observed  # tracing is on: tell each request's observer about its batch
        self._queue: deque[_Pending[R]] = deque()
        self._running = False
        self._arrived = asyncio.Event()
        # Unknown until measured (by the warm-up, or the first batch, which runs off the loop).
        self._compute_ewma = compute_s
        self._drainer: asyncio.Task[None] | None = None

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    async def predict(
        self, batch: Any, rows: int, timeout: float | None = None, observer: BatchObserver | None = None
    ) -> R:
        if len(self._queue) >= self.max_queue:
            raise Overloaded(f"model queue is full ({self.max_queue} requests waiting); retry shortly")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._queue.append(_Pending(batch, rows, future, time.monotonic(), observer))
        self._arrived.set()
        if not self._running:
            self._running = True
            self._drainer = loop.create_task(self._drain())
        if timeout is None:
            return await future
        if timeout < PRECISE_BELOW_S:
            timer = loop.call_later(timeout, _expire, (future, timeout))
            try:
                return await future
            finally:
                timer.cancel()
        timers = CoarseTimers.of(loop)  # a long deadline: no per-request loop timer
        timers.add(loop, future, timeout, _expire, (future, timeout))
        try:
            return await future
        finally:
            timers.cancel(future)

    async def _drain(self) -> None:
        try:
            while self._queue:
                group = await self._collect()
                if group:
                    await self._run(group)
        finally:
            self._running = False

    async def _collect(self) -> list[_Pending[R]]:
        """Take queued requests up to ``max_batch_size`` rows; wait for more only under concurrency."""
        group: list[_Pending[R]] = []
        rows = 0
        deadline = time.monotonic() + self.max_wait_s
        concurrent = len(self._queue) > 1
        while True:
            while self._queue and (not group or self._fits(group[0], self._queue[0], rows)):
                item = self._queue.popleft()
                if item.future.done():  # past its deadline or cancelled: never compute an unread answer
                    continue
                group.append(item)
                rows += item.rows
            remaining = deadline - time.monotonic()
            if not concurrent or rows >= self.max_batch_size or remaining <= 0 or self._queue:
                return group
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return group

    def _fits(self, first: _Pending[R], item: _Pending[R], rows: int) -> bool:
        """Room for ``item``'s rows, and rows of the same shape (a variable-width tensor cannot merge)."""
        return rows + item.rows <= self.max_batch_size and _row_shape(first.batch) == _row_shape(item.batch)

    async def _run(self, group: list[_Pending[R]]) -> None:
        started = time.monotonic()
        merged = group[0].batch if len(group) == 1 else _concat([g.batch for g in group])
        self.in_flight_rows = sum(g.rows for g in group)
        try:
            if self._compute_ewma is not None and self._compute_ewma < INLINE_COMPUTE_S:
                prediction, computed = self._timed(merged)
            else:
                prediction, computed = await asyncio.get_running_loop().run_in_executor(
                    self._executor, self._timed, merged, group
                )
        except Abandoned:
            return  # every caller had gone: nothing to answer
        except BaseException as exc:
            if self._observed:
                _observe(group, started, time.monotonic(), True)
            for item in group:
                if not item.future.done():
                    item.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        finally:
            self.in_flight_rows = 0
        elapsed = time.monotonic() - started
        if self._observed:
            _observe(group, started, started + elapsed, False)
        # The model's own time, not the hand-off to a thread: that waits for the GIL behind the loop under load,
        # and counting it would keep a fast model off the loop for good once one busy moment had pushed it there.
        ewma = self._compute_ewma
        self._compute_ewma = computed if ewma is None else 0.8 * ewma + 0.2 * computed
        answered = 0
        for item, part in zip(group, self._split(prediction, [g.rows for g in group]), strict=True):
            if not item.future.done():
                item.future.set_result(part)
                answered += 1
        if self._on_batch is not None:
            rows = sum(g.rows for g in group)
            self._on_batch(answered, rows, started - min(g.enqueued for g in group), elapsed)

    def _timed(self, batch: Any, group: list[_Pending[R]] | None = None) -> tuple[R, float]:
        """The prediction and the seconds the model took, measured where it runs (the loop or a thread).

        On a thread, ``group`` says whether anyone still waits: a batch whose callers have all gone since it
        was handed over is not computed, and a runtime's long loop stops once they go (``stop_if_abandoned``).
        """
        started = time.perf_counter()
        if group is None:
            prediction = self._predict(batch)
        else:
            with watching(lambda: all(item.future.done() for item in group)):
                stop_if_abandoned()
                prediction = self._predict(batch)
        return prediction, time.perf_counter() - started


def _observe(group: list[_Pending[Any]], started: float, ended: float, failed: bool) -> None:
    rows = sum(g.rows for g in group)
    for item in group:
        if item.observer is not None:
            item.observer.batched(started, ended, rows, len(group), failed)


def _expire(waiting: tuple[asyncio.Future[Any], float]) -> None:
    future, timeout = waiting
    if not future.done():
        future.set_exception(DeadlineExceeded(f"request not served within its deadline of {timeout:g} s"))


def _row_shape(batch: Any) -> tuple[int, ...] | None:
    return batch.shape[1:] if isinstance(batch, np.ndarray) else None


def _concat(batches: list[Any]) -> Any:
    if isinstance(batches[0], np.ndarray):
        return np.concatenate(batches, axis=0)
    return [row for batch in batches for row in batch]


def _split(prediction: Prediction, sizes: list[int]) -> list[Prediction]:
    if len(sizes) == 1:
        return [prediction]
    parts, start = [], 0
    for size in sizes:
        stop = start + size
        probabilities = prediction.probabilities[start:stop] if prediction.probabilities is not None else None
        parts.append(Prediction(values=prediction.values[start:stop], probabilities=probabilities))
        start = stop
    return parts
