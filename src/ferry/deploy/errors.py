"""Deployment errors: a build, fetch or cluster call that failed, said plainly.

FerryError
└── DeployError (deploy_error)
    ├── FetchError (fetch_error)        bundles could not be fetched from a model URI
    ├── ToolError (tool_error)          docker, podman or kubectl is missing or exited non-zero
    └── SpecError (spec_error)          options that cannot make a valid deployment
"""

from __future__ import annotations

from ferry.errors import FerryError


class DeployError(FerryError):
    code = "deploy_error"


class FetchError(DeployError):
    code = "fetch_error"


class ToolError(DeployError):
    code = "tool_error"


class SpecError(DeployError):
    code = "spec_error"
