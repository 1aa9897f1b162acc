"""Work nobody waits for any more: the batcher says when every caller of a batch has gone (the client
closed, or its deadline passed), and a runtime's long loop (decoding images) asks between items."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_abandoned: ContextVar[Callable[[], bool] | None] = ContextVar("ferry_abandoned", default=None)


class Abandoned(Exception):
    """Every caller of the batch has gone: its work stopped before it was done."""


@contextmanager
def watching(abandoned: Callable[[], bool]) -> Iterator[None]:
    """Within this block (on this thread), ``stop_if_abandoned`` raises once ``abandoned()`` is true."""
    token = _abandoned.set(abandoned)
    try:
        yield
    finally:
        _abandoned.reset(token)


def stop_if_abandoned() -> None:
    check = _abandoned.get()
    if check is not None and check():
        raise Abandoned("every caller of this batch has gone (closed, or past its deadline)")
