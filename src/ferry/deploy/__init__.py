"""Deployment: render a Dockerfile, compose file and Kubernetes objects as data, then write, build or apply them."""

from ferry.deploy.errors import DeployError, FetchError, SpecError, ToolError
from ferry.deploy.fetch import fetch_bundles
from ferry.deploy.spec import DeploySpec, Resources

__all__ = ["DeployError", "DeploySpec", "FetchError", "Resources", "SpecError", "ToolError", "fetch_bundles"]
