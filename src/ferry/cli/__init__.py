"""Thin typer commands over the library functions."""
