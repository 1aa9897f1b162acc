"""The public reference examples, trained deterministically in seconds from data the package ships."""

from ferry.examples.build import EXAMPLES, build_examples

__all__ = ["EXAMPLES", "build_examples"]
