"""Seeing what a service does: request IDs, structured and access logs, the prediction log, drift."""
