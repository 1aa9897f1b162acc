"""A chart of one harness run: req/s at 64 connections and p99, Ferry and the peers side by side.

    python bench/chart.py bench/results/2026-11-30-0336/results.jsonl docs/images/performance-latest.png

Reads the harness's results.jsonl (bench/run.sh writes it) and writes a PNG (pip install ferry[plots]).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

NAMES = {
    "flask-gunicorn": "Flask +\ngunicorn",
    "fastapi-uvicorn": "FastAPI",
    "fastapi-uvicorn-async": "FastAPI\nasync",
    "mlserver": "MLServer",
    "litserve": "LitServe",
    "asgi-floor": "ASGI floor\n(no model)",
    "ferry": "Ferry\nnative",
    "ferry-v2": "Ferry\nOIP v2",
}


def saturation(results: Path) -> list[dict[str, Any]]:
    """The 64-connection, 1-row rows of a run, in the harness's order."""
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("test") == "sat" and r.get("rows_per_req") == 1]


def render(rows: list[dict[str, Any]], title: str, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [NAMES.get(r["server"], r["server"]) for r in rows]
    colours = ["#1f77b4" if r["server"].startswith("ferry") else "#9e9e9e" for r in rows]
    figure, (rps, p99) = plt.subplots(1, 2, figsize=(12, 4.2))
    rps.bar(names, [r["rps"] for r in rows], color=colours)
    rps.set_title("req/s at 64 connections (higher is better)")
    p99.bar(names, [r["p99_ms"] for r in rows], color=colours)
    p99.set_yscale("log")
    p99.set_title("p99 at 64 connections, ms, log scale (lower is better)")
    for axes in (rps, p99):
        axes.tick_params(axis="x", labelsize=8)
        axes.grid(axis="y", alpha=0.3)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="a harness run's results.jsonl")
    parser.add_argument("out", type=Path, help="the PNG to write")
    parser.add_argument("--title", default="one worker on one core each, iris, 1-row JSON requests")
    args = parser.parse_args()
    render(saturation(args.results), args.title, args.out)


if __name__ == "__main__":
    main()
