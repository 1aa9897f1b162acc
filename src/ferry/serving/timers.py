"""Coarse timers: deadlines checked by one ticker per event loop instead of one timer per request.

A loop timer per request (``loop.call_later`` or ``asyncio.timeout``) costs a heap push and a cancel
on every prediction. Long timeouts (a 30 s request deadline, a 30 s body timeout) need no finer than
``TICK_S`` resolution, so they are entries in a dict swept by one ticker that runs only while
entries exist. Short timeouts (under ``PRECISE_BELOW_S``) keep a precise loop timer.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import Any

TICK_S = 0.05
PRECISE_BELOW_S = 1.0


class CoarseTimers:
    """Calls ``fire(arg)`` once ``deadline`` (loop time) has passed, unless ``cancel(key)`` came first."""

    def __init__(self) -> None:
        self._entries: dict[Any, tuple[float, Callable[[Any], None], Any]] = {}
        self._ticker: asyncio.TimerHandle | None = None

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> CoarseTimers:
        """The timers of ``loop``: callbacks always run on their own loop."""
        timers = _TIMERS.get(loop)
        if timers is None:
            timers = _TIMERS[loop] = cls()  # holds no reference to the loop while idle
        return timers

    def add(
        self, loop: asyncio.AbstractEventLoop, key: Any, delay: float, fire: Callable[[Any], None], arg: Any
    ) -> None:
        self._entries[key] = (loop.time() + delay, fire, arg)
        if self._ticker is None:
            self._ticker = loop.call_later(TICK_S, self._tick, loop)

    def cancel(self, key: Any) -> None:
        self._entries.pop(key, None)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        due = [key for key, (deadline, _, _) in self._entries.items() if deadline <= now]
        for key in due:
            _, fire, arg = self._entries.pop(key)
            fire(arg)
        self._ticker = loop.call_later(TICK_S, self._tick, loop) if self._entries else None


_TIMERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, CoarseTimers] = weakref.WeakKeyDictionary()
