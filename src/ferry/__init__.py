"""Ferry: from a trained model to a fast, standing prediction service.

``build`` and ``load_bundle`` are imported on first use: ``ferry serve`` then starts without the
build-side code (and its frameworks), which is a good part of its ready time. The version is a
constant, not read through ``importlib.metadata``, whose scan of every installed package cost
each start tens of milliseconds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ferry._version import __version__

if TYPE_CHECKING:
    from ferry.builder import build
    from ferry.runtimes.load import load_bundle

__all__ = ["__version__", "build", "load_bundle"]


def __getattr__(name: str) -> Any:
    if name == "build":
        from ferry.builder import build

        return build
    if name == "load_bundle":
        from ferry.runtimes.load import load_bundle

        return load_bundle
    raise AttributeError(f"module 'ferry' has no attribute {name!r}")
