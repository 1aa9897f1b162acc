"""A self-contained HTML report: summary, SLA verdict, and two inline SVG charts (no scripts, no CDN)."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

WIDTH, HEIGHT, PAD = 860, 260, 48
LINE_COLOURS = {"p50": "#2b8a3e", "p90": "#e67700", "p99": "#c92a2a"}
STATUS_COLOURS = {"2": "#51cf66", "3": "#74c0fc", "4": "#fcc419", "5": "#fa5252"}
NO_RESPONSE_COLOUR = "#495057"


def render_html(summary: dict[str, Any]) -> str:
    timeline = summary.get("timeline", [])
    title = f"ferry loadtest - {summary.get('model', '')} ({summary.get('mode', '')} loop)"
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:2em;color:#212529}"
        "table{border-collapse:collapse}td,th{padding:.25em .8em;border-bottom:1px solid #dee2e6;text-align:left}"
        ".pass{color:#2b8a3e}.fail{color:#c92a2a}svg{background:#f8f9fa;margin:.5em 0}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        _summary_table(summary),
        _sla_section(summary.get("sla")),
        "<h2>Latency over time</h2>",
        latency_svg(timeline),
        "<h2>Throughput over time, by status</h2>",
        throughput_svg(timeline),
        "<h2>Raw summary</h2>",
        f"<pre id='summary-json'>{html.escape(json.dumps(_without_timeline(summary), indent=2))}</pre>",
        "</body></html>",
    ]
    return "\n".join(parts)


def write_html(summary: dict[str, Any], path: Path) -> Path:
    path.write_text(render_html(summary), encoding="utf-8")
    return path


def _without_timeline(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if k != "timeline"}


def _summary_table(s: dict[str, Any]) -> str:
    lat = s.get("latency_ms", {})
    rows = [
        ("URL", s.get("url")),
        ("Requested rate", f"{s['requested_rate']:.1f} req/s" if s.get("requested_rate") else "closed loop"),
        ("Achieved rate", f"{s.get('achieved_rate', 0):.1f} req/s"),
        ("Requests", s.get("completed")),
        ("Success rate", f"{s.get('success_rate', 0) * 100:.3f}%"),
        *((f"Latency {k}", f"{lat[k]:.2f} ms") for k in ("p50", "p90", "p99", "p999", "max") if k in lat),
        ("Status codes", ", ".join(f"{k}: {v}" for k, v in s.get("status_counts", {}).items())),
        ("Errors", ", ".join(f"{k}: {v}" for k, v in s.get("errors", {}).items()) or "none"),
    ]
    if s.get("generator", {}).get("behind_schedule"):
        rows.append(("Generator", f"fell behind schedule (max lag {s['generator']['max_lag_ms']:.1f} ms)"))
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table id='summary'>{cells}</table>"


def _sla_section(sla: dict[str, Any] | None) -> str:
    if not sla:
        return ""
    verdict = "<span class='pass'>PASSED</span>" if sla["passed"] else "<span class='fail'>FAILED</span>"
    rows = "".join(
        f"<tr><td class='{'pass' if c['passed'] else 'fail'}'>{'pass' if c['passed'] else 'FAIL'}</td>"
        f"<td>{html.escape(c['detail'])}</td></tr>"
        for c in sla["conditions"]
    )
    return f"<h2 id='sla'>SLA {verdict}</h2><table>{rows}</table>"


def _axes(x_max: float, y_max: float, y_unit: str) -> list[str]:
    out = [f"<line x1='{PAD}' y1='{HEIGHT - PAD}' x2='{WIDTH - 10}' y2='{HEIGHT - PAD}' stroke='#868e96'/>"]
    out.append(f"<line x1='{PAD}' y1='10' x2='{PAD}' y2='{HEIGHT - PAD}' stroke='#868e96'/>")
    for i in range(5):
        value = y_max * i / 4
        y = HEIGHT - PAD - (HEIGHT - PAD - 10) * i / 4
        out.append(f"<text x='{PAD - 4}' y='{y + 4:.1f}' font-size='11' text-anchor='end'>{value:.3g}</text>")
        out.append(f"<line x1='{PAD}' y1='{y:.1f}' x2='{WIDTH - 10}' y2='{y:.1f}' stroke='#e9ecef'/>")
    out.append(f"<text x='12' y='{HEIGHT / 2}' font-size='11' transform='rotate(-90 12 {HEIGHT / 2})'>{y_unit}</text>")
    out.append(f"<text x='{WIDTH / 2}' y='{HEIGHT - 12}' font-size='11'>seconds (0 to {x_max:g})</text>")
    return out


def _x(t: float, n: int) -> float:
    return PAD + (WIDTH - 10 - PAD) * t / max(n, 1)


def _y(v: float, y_max: float) -> float:
    return HEIGHT - PAD - (HEIGHT - PAD - 10) * v / (y_max or 1.0)


def latency_svg(timeline: list[dict[str, Any]]) -> str:
    n = len(timeline)
    y_max = max((b["latency_ms"].get("p99", 0.0) for b in timeline), default=1.0) * 1.1 or 1.0
    out = [f"<svg id='latency-chart' xmlns='http://www.w3.org/2000/svg' width='{WIDTH}' height='{HEIGHT}'>"]
    out += _axes(n, y_max, "latency (ms)")
    for key, colour in LINE_COLOURS.items():
        points = " ".join(f"{_x(b['t'] + 0.5, n):.1f},{_y(b['latency_ms'].get(key, 0.0), y_max):.1f}" for b in timeline)
        out.append(f"<polyline class='series' data-series='{key}' fill='none' stroke='{colour}' points='{points}'/>")
    out += _legend([(k, c) for k, c in LINE_COLOURS.items()])
    out.append("</svg>")
    return "".join(out)


def status_colour(code: str) -> str:
    return STATUS_COLOURS.get(code[:1], NO_RESPONSE_COLOUR) if code[:1].isdigit() else NO_RESPONSE_COLOUR


def throughput_svg(timeline: list[dict[str, Any]]) -> str:
    n = len(timeline)
    y_max = max((b["requests"] for b in timeline), default=1) * 1.1 or 1.0
    codes = sorted({code for b in timeline for code in b["status_counts"]})
    out = [f"<svg id='throughput-chart' xmlns='http://www.w3.org/2000/svg' width='{WIDTH}' height='{HEIGHT}'>"]
    out += _axes(n, y_max, "responses / s")
    bar = max(1.0, (WIDTH - 10 - PAD) / max(n, 1) - 1)
    for b in timeline:
        base = 0.0
        for code in codes:
            count = b["status_counts"].get(code, 0)
            if not count:
                continue
            top, bottom = _y(base + count, y_max), _y(base, y_max)
            out.append(
                f"<rect class='bar' data-status='{html.escape(code)}' x='{_x(b['t'], n):.1f}' y='{top:.1f}' "
                f"width='{bar:.1f}' height='{bottom - top:.1f}' fill='{status_colour(code)}'/>"
            )
            base += count
    out += _legend([(code, status_colour(code)) for code in codes])
    out.append("</svg>")
    return "".join(out)


def _legend(items: list[tuple[str, str]]) -> list[str]:
    out = []
    for i, (label, colour) in enumerate(items):
        x = PAD + 10 + i * 110
        out.append(f"<rect x='{x}' y='14' width='10' height='10' fill='{colour}'/>")
        out.append(f"<text x='{x + 14}' y='23' font-size='11'>{html.escape(label)}</text>")
    return out
