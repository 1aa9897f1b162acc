"""``ferry monitor``: summarise a prediction log; the prediction distribution over time, and input drift.

Drift is the population stability index of each logged feature against the training statistics
that ``ferry.build(..., training_data=...)`` kept in the bundle's metadata. Where the bundle explains its
answers exactly (``ferry.runtimes.explain``), the mean absolute contribution of each feature over the
newest ``explain_rows`` logged rows says what drives the model in production.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from ferry.bundle.manifest import read_manifest
from ferry.errors import FerryError, MonitorError
from ferry.observability.drift import psi, verdict

EXPLAIN_ROWS = 2000  # the newest logged rows explained per model version: bounded time and memory


def read_records(paths: Iterable[Path]) -> list[dict[str, Any]]:
    records = []
    for path in paths:
        try:
            lines = path.read_bytes().splitlines()
        except OSError as exc:
            raise MonitorError(f"cannot read {path}: {exc.strerror}") from None
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                records.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                raise MonitorError(f"{path}:{number}: not a JSON line") from None
    records.sort(key=lambda r: r.get("ts", ""))
    return records


def summarize(
    records: list[dict[str, Any]], repo: Path | None = None, intervals: int = 6, explain_rows: int = EXPLAIN_ROWS
) -> dict[str, Any]:
    """Per model version: rows, the prediction distribution in ``intervals`` equal time slices, drift, and
    (with the repository, where the model explains) the mean absolute contribution per feature."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        groups[(str(record.get("model")), str(record.get("version")))].append(record)
    models = []
    for (model, version), group in sorted(groups.items()):
        entry: dict[str, Any] = {
            "model": model,
            "version": version,
            "records": len(group),
            "rows": sum(len(r.get("outputs") or []) for r in group),
            "over_time": _over_time(group, intervals),
        }
        if repo is not None:
            entry["drift"] = _drift(group, repo / model / version)
            entry["contributions"] = contributions(group, repo / model / version, explain_rows)
        models.append(entry)
    return {"models": models}


def _over_time(group: list[dict[str, Any]], intervals: int) -> list[dict[str, Any]]:
    times = [datetime.fromisoformat(r["ts"]).timestamp() for r in group]
    start, end = min(times), max(times)
    width = (end - start) / intervals or 1.0
    slices: list[list[Any]] = [[] for _ in range(intervals)]
    for when, record in zip(times, group, strict=True):
        slices[min(int((when - start) / width), intervals - 1)].extend(record.get("outputs") or [])
    out = []
    for index, outputs in enumerate(slices):
        begin = datetime.fromtimestamp(start + index * width).astimezone().isoformat(timespec="seconds")
        item: dict[str, Any] = {"from": begin, "rows": len(outputs)}
        numbers = [v for v in outputs if isinstance(v, int | float) and not isinstance(v, bool)]
        if outputs and len(numbers) == len(outputs):
            item["mean"] = float(np.mean(numbers))
            item["p50"], item["p90"] = (float(q) for q in np.quantile(numbers, [0.5, 0.9]))
        elif outputs:
            counts = Counter(str(v) for v in outputs)
            item["shares"] = {k: round(c / len(outputs), 4) for k, c in counts.most_common()}
        out.append(item)
    return out


def _drift(group: list[dict[str, Any]], bundle: Path) -> dict[str, Any]:
    try:
        manifest = read_manifest(bundle)
    except FerryError as exc:
        return {"error": exc.message}
    training = manifest.metadata.get("training_stats")
    if not training:
        return {"error": f"{bundle} has no training statistics (build it with --training-data FILE)"}
    values: dict[str, list[float]] = defaultdict(list)
    for record in group:
        inputs = record.get("inputs")
        for row in inputs if isinstance(inputs, list) else []:
            for name, value in row.items() if isinstance(row, dict) else []:
                if isinstance(value, int | float) and not isinstance(value, bool):
                    values[name].append(float(value))
    features: dict[str, dict[str, Any]] = {}
    for name, stats in training["features"].items():
        seen = values.get(name)
        if not seen:
            features[name] = {"rows": 0, "psi": None, "drift": "no data"}
            continue
        value = psi(stats["histogram"], seen)
        features[name] = {
            "rows": len(seen),
            "psi": round(value, 4),
            "drift": verdict(value),
            "mean": round(float(np.mean(seen)), 4),
            "training_mean": round(stats["mean"], 4),
        }
    return {"features": features}


def contributions(group: list[dict[str, Any]], bundle: Path, explain_rows: int) -> dict[str, Any]:
    """Mean |contribution| per feature over the newest ``explain_rows`` logged rows, in the raw (margin)
    space; several score columns (multiclass) are summed per feature, as their bars would stack."""
    from ferry.runtimes.explain import explanation_of
    from ferry.runtimes.load import load_bundle

    try:
        loaded = load_bundle(bundle)
    except FerryError as exc:
        return {"error": exc.message}
    how = explanation_of(loaded.runtime, loaded.manifest.runtime)
    explain = getattr(loaded.runtime, "explain", None)
    if "unavailable" in how or explain is None:
        return {"error": f"not explained: {how.get('unavailable', 'no explainer')}"}
    if loaded.manifest.input.kind != "features":
        return {"error": f"not explained: {loaded.manifest.input.kind} inputs (feature models only)"}
    names = [f.name for f in loaded.manifest.input.features]
    rows = _logged_rows(group, names)[-explain_rows:]
    if not rows:
        return {"error": "no logged row has every feature as a number (redacted or missing)"}
    found = explain(np.asarray(rows, dtype=np.float64))
    mean = np.abs(found.contributions).mean(axis=0).sum(axis=0)  # [features]
    order = np.argsort(-mean, kind="stable")
    return {
        "rows": len(rows),
        "method": found.method,
        "link": found.link,
        "mean_abs": {found.features[i]: float(mean[i]) for i in order},
    }


def _logged_rows(group: list[dict[str, Any]], names: list[str]) -> list[list[float]]:
    rows = []
    for record in group:
        inputs = record.get("inputs")
        for row in inputs if isinstance(inputs, list) else []:
            values = [row.get(name) for name in names] if isinstance(row, dict) else []
            if values and all((isinstance(v, int | float) and not isinstance(v, bool)) or v is None for v in values):
                rows.append([math.nan if v is None else float(v) for v in values])
    return rows


def render_text(summary: dict[str, Any]) -> str:
    lines = []
    for model in summary["models"]:
        lines.append(f"{model['model']}:{model['version']}  {model['records']} records, {model['rows']} rows")
        lines.append("  predictions over time:")
        for item in model["over_time"]:
            if "shares" in item:
                detail = "  ".join(f"{k} {v:.0%}" for k, v in item["shares"].items())
            elif "mean" in item:
                detail = f"mean {item['mean']:.4g}  p50 {item['p50']:.4g}  p90 {item['p90']:.4g}"
            else:
                detail = "-"
            lines.append(f"    {item['from']}  {item['rows']:>6} rows  {detail}")
        drift = model.get("drift")
        if drift is not None:
            lines.append("  input drift (PSI against training):")
            if "error" in drift:
                lines.append(f"    {drift['error']}")
            for name, info in drift.get("features", {}).items():
                score = "-" if info["psi"] is None else f"{info['psi']:.4f}"
                lines.append(f"    {name:<24} psi {score:>8}  {info['drift']}")
        explained = model.get("contributions")
        if explained is not None and "error" in explained:
            lines.append(f"  contributions: {explained['error']}")
        elif explained is not None:
            lines.append(
                f"  mean |contribution| over the newest {explained['rows']} rows "
                f"({explained['method']}, raw score, link {explained['link']}):"
            )
            largest = max(explained["mean_abs"].values(), default=0.0) or 1.0
            for name, value in explained["mean_abs"].items():
                lines.append(f"    {name:<24} {value:>10.4g}  {'#' * round(30 * value / largest)}")
    return "\n".join(lines) if lines else "no records"


def write_plot(summary: dict[str, Any], path: Path) -> int:
    """The mean |contribution| bars of every explained model version as one PNG; returns how many."""
    explained = [m for m in summary["models"] if "mean_abs" in (m.get("contributions") or {})]
    if not explained:
        raise MonitorError("no model version in the log was explained: no chart to draw (see the text summary)")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MonitorError("the PNG chart needs matplotlib: pip install 'ferry[plots]'") from None
    heights = [max(2.0, 0.35 * len(m["contributions"]["mean_abs"]) + 1.2) for m in explained]
    figure, axes = plt.subplots(len(explained), 1, figsize=(8, sum(heights)), squeeze=False)
    for axis, model in zip(axes[:, 0], explained, strict=True):
        info = model["contributions"]
        names, values = list(info["mean_abs"])[::-1], list(info["mean_abs"].values())[::-1]
        axis.barh(names, values, color="#3b6ea5")
        axis.set_title(f"{model['model']}:{model['version']}  ({info['rows']} logged rows, {info['method']})")
        axis.set_xlabel(f"mean |contribution| to the raw score (link: {info['link']})")
    figure.tight_layout()
    try:
        figure.savefig(path, dpi=100)
    except OSError as exc:
        raise MonitorError(f"cannot write {path}: {exc.strerror}") from None
    finally:
        plt.close(figure)
    return len(explained)
