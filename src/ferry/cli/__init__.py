"""Thin typer commands over the library functions."""

# The one exit-code policy of every command (``ferry.cli.errors`` prints the line): 2 for usage (a bad
# argument or option), 1 for a failure (a bad model, an unreachable service, a server that did not start).
USAGE, FAILURE = 2, 1
