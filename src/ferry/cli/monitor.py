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
        explain_rows: Annotated[
            int | None,
            typer.Option(min=1, help="Newest logged rows explained per model version (with --repo; else 2000)."),
        ] = None,
        plot: Annotated[
            Path | None, typer.Option(help="Write the mean |contribution| per feature as a PNG (with --repo).")
        ] = None,
    ) -> None:
        """Summarise a prediction log: predictions over time, input drift (PSI) per feature and, for models
        that explain their answers, the mean absolute contribution per feature."""
        from ferry.cli.errors import run as _run
        from ferry.observability.monitor import EXPLAIN_ROWS, read_records, render_text, summarize, write_plot

        summary = _run(lambda: summarize(read_records(logfiles), repo, intervals, explain_rows or EXPLAIN_ROWS))
        typer.echo(json.dumps(summary, indent=2) if as_json else render_text(summary))
        if plot is not None:
            _run(lambda: write_plot(summary, plot))
