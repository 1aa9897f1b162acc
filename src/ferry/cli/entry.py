"""The ``ferry`` entry point: ``ferry serve`` starts without typer when its options are plain.

typer builds a pydantic adapter for every option, which with rich costs about a third of a compiled
server's start-up CPU. A ``serve`` command line made only of the ``Settings`` options (and their
``FERRY_*`` variables) is parsed here, from the same ``Settings`` fields, and the server starts at once.
Anything else (``--help``, an error to explain, ``--tracing``/``--routes``/``--model-uri``, which check
files or fetch first, other commands) goes to the typer app, which owns every message.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import sys
from pathlib import Path
from typing import Any

from ferry.settings import Settings, coerce

_NEEDS_TYPER = ("tracing", "routes", "model_uri")


def main() -> None:
    # No collections while start-up imports: each full one walks every object the imports made so
    # far (tens of ms). The server freezes those objects and turns the collector back on once its
    # app is built (``ferry.server.worker``); any other command turns it back on below.
    gc.disable()
    from ferry.errors import FerryError

    settings = plain_serve_settings(sys.argv[1:])
    if settings is not None:
        from ferry.cli.serve import check_startup, run_server

        try:
            check_startup(settings)
        except FerryError:
            settings = None  # typer explains it, in one line
    if settings is None:
        from ferry.cli.main import app

        gc.enable()
        app()
        return
    run_server(settings)


def plain_serve_settings(argv: list[str]) -> Settings | None:
    """The settings of a plain ``serve`` command line, or None for typer to handle."""
    if argv[:1] != ["serve"] or any(a in ("-h", "--help") for a in argv):
        return None
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    parser.add_argument("repo", nargs="?")
    fields = [f for f in dataclasses.fields(Settings) if f.name != "repo"]
    for field in fields:
        option = "--" + field.name.replace("_", "-")
        if field.type in ("bool", bool):
            parser.add_argument(option, action=argparse.BooleanOptionalAction, default=None)
        else:
            parser.add_argument(option, default=None)
    try:
        given, unknown = parser.parse_known_args(argv[1:])
        if unknown:
            return None
        values: dict[str, Any] = dataclasses.asdict(Settings.from_env())
        for name, raw in vars(given).items():
            if raw is not None:
                field_type = next((f.type for f in fields if f.name == name), "Path")
                values[name] = raw if isinstance(raw, bool) else coerce(field_type, raw)
        if given.repo is None and "FERRY_REPO" not in os.environ:
            return None  # typer says the argument is missing
        settings = Settings(**{**values, "repo": Path(values["repo"]).resolve()})
    except (argparse.ArgumentError, ValueError, TypeError):
        return None
    from ferry.observability.logs import LOG_FORMATS

    if settings.log_format not in LOG_FORMATS or any(getattr(settings, name) for name in _NEEDS_TYPER):
        return None
    from ferry.cli.serve import repository_problem

    if repository_problem(settings):
        return None  # typer explains it
    return settings
