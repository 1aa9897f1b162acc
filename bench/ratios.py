"""Ferry's targets as ratios to its peers, from one run of the shared harness (stdlib only).

Usage: python3 bench/ratios.py RESULTS_DIR   (the folder peers.sh wrote: results.jsonl)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

PEERS = [
    "flask-gunicorn",
    "fastapi-uvicorn",
    "fastapi-uvicorn-async",
    "mlserver",
    "mlserver-pw0",
    "litserve",
    "bentoml",
    "ray-serve-mor100",
]


def main(folder: Path) -> None:
    rows = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines() if line.strip()]
    by = {(r["server"], r["test"]): r for r in rows if isinstance(r.get("run"), int)}
    info = {r["server"]: r for r in rows if r.get("test") == "info"}

    def get(server: str, test: str, key: str) -> float | None:
        row = by.get((server, test))
        return float(row[key]) if row and row.get(key) is not None else None

    flask, floor = get("flask-gunicorn", "sat", "rps"), get("asgi-floor", "sat", "rps")
    peer_rows = [r["rps"] * r["rows_per_req"] for (s, t), r in by.items() if t == "batch" and s in PEERS]
    best_peer_rows = max(peer_rows, default=None)
    print("| target | ferry (native JSON) | met | ferry (OIP v2) | met | goal |")
    print("|---|---:|---|---:|---|---|")

    def line(name: str, values: list[float | None], goal: str, ok: list[bool | None]) -> None:
        cells = []
        for value, met in zip(values, ok, strict=True):
            cells.append(f"{value:,.2f}" if value is not None else "-")
            cells.append("-" if met is None else "yes" if met else "**no**")
        print(f"| {name} | {' | '.join(cells)} | {goal} |")

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    servers = ["ferry", "ferry-v2"]
    x_flask = [ratio(get(s, "sat", "rps"), flask) for s in servers]
    line("req/s @c64 ÷ flask-gunicorn", x_flask, "≥ 12", [v >= 12 if v else None for v in x_flask])
    x_floor = [ratio(get(s, "sat", "rps"), floor) for s in servers]
    line("req/s @c64 ÷ ASGI floor", x_floor, "≥ 0.50", [v >= 0.5 if v else None for v in x_floor])
    p99 = [get(s, "sat", "p99_ms") for s in servers]
    line("p99 @c64 (ms)", p99, "≤ 10", [v <= 10 if v is not None else None for v in p99])
    p50 = [get(s, "lat", "p50_ms") for s in servers]
    line("p50 @c1 (ms)", p50, "≤ 0.25", [v <= 0.25 if v is not None else None for v in p50])
    batch = [ratio(get(s, "batch", "rps") and get(s, "batch", "rps") * 100, best_peer_rows) for s in servers]
    line("100-row rows/s ÷ best peer", batch, "≥ 4", [v >= 4 if v else None for v in batch])
    ready = [info[s]["ready_s"] if s in info else None for s in servers]
    line("ready after (s)", ready, "≤ 2", [v <= 2 if v is not None else None for v in ready])
    rss = [info[s]["rss_mib"] if s in info else None for s in servers]
    fastapi_rss = info.get("fastapi-uvicorn", {}).get("rss_mib")
    rss_ratio = [ratio(v, fastapi_rss) for v in rss]
    line("RSS ÷ FastAPI app (same model)", rss_ratio, "≤ 1.20", [v <= 1.2 if v else None for v in rss_ratio])
    print()
    print(
        f"flask-gunicorn {flask or 0:,.0f} req/s; ASGI floor {floor or 0:,.0f} req/s; "
        f"best peer 100-row {best_peer_rows or 0:,.0f} rows/s; FastAPI RSS {fastapi_rss} MiB"
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
