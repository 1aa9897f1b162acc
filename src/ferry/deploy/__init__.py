"""Deployment: render a Dockerfile, compose file and Kubernetes objects as data, then write, build or apply them."""

from ferry.deploy.fetch import fetch_bundles
from ferry.deploy.spec import DeploySpec, Resources
from ferry.errors import DeployError, FetchError, SpecError, ToolError

__all__ = ["DeployError", "DeploySpec", "FetchError", "Resources", "SpecError", "ToolError", "fetch_bundles"]
