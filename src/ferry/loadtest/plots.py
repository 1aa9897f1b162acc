"""The load-test report as one PNG (latency percentiles over time; responses per second by status), to paste anywhere.

Needs matplotlib (``pip install 'ferry[plots]'``); drawn off-screen with the Agg backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ferry.errors import LoadTestError
from ferry.loadtest.report import LINE_COLOURS, status_colour


def write_png(summary: dict[str, Any], path: Path) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise LoadTestError("PNG charts need matplotlib: pip install 'ferry[plots]'") from None
    timeline = summary.get("timeline", [])
    seconds = [b["t"] + 0.5 for b in timeline]  # each bucket drawn at its middle
    figure, (latency, statuses) = plt.subplots(2, 1, figsize=(9, 6), sharex=True, layout="constrained")
    try:
        title = f"ferry loadtest: {summary.get('model', '')} ({summary.get('mode', '')} loop, {summary.get('url', '')})"
        figure.suptitle(title, fontsize=10)
        for key, colour in LINE_COLOURS.items():
            values = [b["latency_ms"].get(key, 0.0) for b in timeline]
            latency.plot(seconds, values, color=colour, label=key, marker=".")
        latency.set_ylabel("latency (ms)")
        latency.set_ylim(bottom=0)
        latency.legend(loc="upper left")
        latency.grid(alpha=0.3)
        _stacked_statuses(statuses, timeline)
        statuses.set_xlabel("seconds since start")
        figure.savefig(path, dpi=100)
    finally:
        plt.close(figure)
    return path


def _stacked_statuses(axes: Any, timeline: list[dict[str, Any]]) -> None:
    codes = sorted({code for b in timeline for code in b["status_counts"]})
    base = [0] * len(timeline)
    starts = [b["t"] for b in timeline]
    for code in codes:
        counts = [b["status_counts"].get(code, 0) for b in timeline]
        axes.bar(starts, counts, width=0.9, align="edge", bottom=base, color=status_colour(code), label=code)
        base = [x + y for x, y in zip(base, counts, strict=True)]
    axes.set_ylabel("responses / s")
    if codes:
        axes.legend(loc="upper left", title="status")
    axes.grid(alpha=0.3, axis="y")
