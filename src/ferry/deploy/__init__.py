"""Deployment: render a Dockerfile, compose file and Kubernetes objects as data, then write, build or apply them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ferry.deploy.spec import DeploySpec, Resources
from ferry.errors import DeployError, FetchError, SpecError, ToolError

if TYPE_CHECKING:
    from ferry.deploy.fetch import fetch_bundles

__all__ = ["DeployError", "DeploySpec", "FetchError", "Resources", "SpecError", "ToolError", "fetch_bundles"]


def __getattr__(name: str) -> Any:
    # fetch imports urllib.request (tens of ms): loaded on first use, so importing ferry.deploy.spec
    # (as every CLI command's options do) does not pay for it
    if name == "fetch_bundles":
        from ferry.deploy.fetch import fetch_bundles

        return fetch_bundles
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
