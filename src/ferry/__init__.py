"""Ferry: from a trained model to a fast, standing prediction service.

``build`` and ``load_bundle`` are imported on first use: ``ferry serve`` then starts without the
build-side code (and its frameworks), which is a good part of its ready time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ferry.bundle.build import build
    from ferry.bundle.load import load_bundle

    __version__: str

__all__ = ["__version__", "build", "load_bundle"]


def __getattr__(name: str) -> Any:
    if name == "build":
        from ferry.bundle.build import build

        return build
    if name == "load_bundle":
        from ferry.bundle.load import load_bundle

        return load_bundle
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            found = version("ferry")
        except PackageNotFoundError:  # running from a source tree that is not installed
            found = "0.0.0"
        globals()["__version__"] = found
        return found
    raise AttributeError(f"module 'ferry' has no attribute {name!r}")
