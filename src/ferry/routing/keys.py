"""What the router leaves in an ASGI scope for the dispatcher, apart from the router, so that a server
without a routes file never imports it."""

ROUTED_MODEL_KEY = "ferry.routed_model"  # (model, version) the router chose; the path's own otherwise
