"""``ferry monitor LOGFILE``: the prediction distribution over time and feature drift, from a prediction log."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command("monitor")
    def monitor_command(
        logfiles: Annotated[list[Path], typer.Argument(help="Prediction log file(s), rotated ones included.")],
        repo: Annotated[
            Path | None, typer.Option(help="Model repository, for drift against the bundles' training statistics.")
        ] = None,
        intervals: Annotated[int, typer.Option(min=1, help="Time slices for the prediction distribution.")] = 6,
        as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    ) -> None:
        """Summarise a prediction log: predictions over time, and input drift (PSI) per feature."""
        from ferry.cli.errors import run as _run
        from ferry.observability.monitor import read_records, render_text, summarize

        summary = _run(lambda: summarize(read_records(logfiles), repo, intervals))
        typer.echo(json.dumps(summary, indent=2) if as_json else render_text(summary))
