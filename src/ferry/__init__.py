"""Ferry: from a trained model to a fast, standing prediction service."""

from importlib.metadata import PackageNotFoundError, version

from ferry.bundle import build, load_bundle

try:
    __version__ = version("ferry")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = ["__version__", "build", "load_bundle"]
