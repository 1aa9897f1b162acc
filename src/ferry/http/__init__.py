"""The HTTP transport: app factory, thin endpoints, and the single error-to-HTTP translation."""

from ferry.http.app import create_app

__all__ = ["create_app"]
