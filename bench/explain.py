"""Explanations against predictions, in one process: what an exact explanation costs per row.

    python bench/explain.py [--rounds 5] [--out FILE.md] [--concurrency 8] [--seconds 5] [--server-only]

Per model and batch size (1, 20, 100 rows), the time per row of:
``ferry predict`` (the compiled evaluator's raw scores, as serving computes them), ``ferry explain``
(``ferry.runtimes.explain``: path-dependent TreeSHAP on the same arrays), LightGBM's own
``predict(pred_contrib=True)`` (one thread, as Ferry has) and ``shap.TreeExplainer(model).shap_values``.
Every candidate gets the same rows; the contributions are checked equal to the reference (1e-9
relative) before anything is timed. Models: the reviews example's LightGBM booster (200 trees of 15
leaves over 16,384 hashed n-gram columns, fed real review texts; Ferry's candidates get the 446
columns the trees read, as the text runtime hands them, the others all 16,384) and scikit-learn
forests on 20 dense columns (100 trees of depth 6, and of depth 10 as bench/trees.py has).
Each round runs every candidate in turn, so a shared machine's noise falls on all alike: the table
gives the median over rounds (and the fastest round). Ferry builds its leaf tables on the model's first
explanation (reported apart); the answers of deeper leaves are kept once computed, so "ferry explain" on rows seen
before reads them back, and "ferry explain, cold" empties that cache before every call (rows never seen).

Then a server: ``ferry serve`` on the reviews bundle, answered by ``/models/reviews/predict`` and
``/models/reviews/explain`` in turn (one review a request, --concurrency clients, --seconds each, a fresh
text per request from the 100), requests per second of each from the same run. ``--server-only`` runs just
this part; the server is whichever ``ferry`` this Python imports (``PYTHONPATH=OLD/src`` measures another tree).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ferry.examples.build import REVIEW_FEATURIZER, build_reviews, load_reviews
from ferry.runtimes.explain import TreeShap
from ferry.runtimes.load import load_bundle
from ferry.runtimes.textfeatures import HashedCharNgrams
from ferry.runtimes.trees import TreeEnsemble, from_sklearn

ROWS = (1, 20, 100)
Call = Callable[[], Any]


def timed(call: Call, budget_s: float = 0.3) -> float:
    """Seconds per call: as many calls as fit in ``budget_s`` (at least 2), their mean."""
    call()
    calls, start = 0, time.perf_counter()
    while calls < 2 or time.perf_counter() - start < budget_s:
        call()
        calls += 1
    return (time.perf_counter() - start) / calls


def reviews(work: Path) -> tuple[str, dict[str, Callable[[int], Call]], Callable[[int], None], float]:
    import lightgbm
    import shap  # type: ignore[import-untyped]

    bundle = build_reviews(work / "repo")
    runtime: Any = load_bundle(bundle).runtime
    ensemble: TreeEnsemble = runtime.program.trees.ensemble
    texts = [r["text"] for r in load_reviews()][:100]
    full_width = HashedCharNgrams(REVIEW_FEATURIZER, np.arange(runtime.featurizer.n_features))
    full = full_width.transform(texts)
    compact = runtime.featurizer.transform(texts)
    booster = lightgbm.Booster(model_file=str(bundle / "model.txt"))
    explainer = shap.TreeExplainer(booster)
    ferry = TreeShap(ensemble)
    started = time.perf_counter()
    ferry._ready()  # paths and tables: built by a model's first explanation
    first = time.perf_counter() - started

    def check(rows: int) -> None:
        reference = np.asarray(booster.predict(full[:rows], pred_contrib=True, num_threads=1))
        mine = ferry.explain_compact(compact[:rows])
        expected = np.zeros_like(reference)
        expected[:, ensemble.features_used] = mine.values[:, 0, :]
        expected[:, -1] = mine.expected_value[0]
        _close(expected, reference, "LightGBM pred_contrib")

    candidates: dict[str, Callable[[int], Call]] = {
        "ferry predict (raw score)": lambda n: lambda: ensemble.predict_compact(compact[:n]),
        "ferry explain": lambda n: lambda: ferry.explain_compact(compact[:n]),
        "ferry explain, cold": lambda n: lambda: cold(ferry).explain_compact(compact[:n]),
        "lightgbm pred_contrib": lambda n: lambda: booster.predict(full[:n], pred_contrib=True, num_threads=1),
        "shap TreeExplainer": lambda n: lambda: explainer.shap_values(full[:n]),
    }
    return "LightGBM reviews (200 trees x 15 leaves, 16,384 columns)", candidates, check, first


def forest(depth: int) -> tuple[str, dict[str, Callable[[int], Call]], Callable[[int], None], float]:
    import shap  # type: ignore[import-untyped]
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 20))
    y = x[:, 0] + np.sin(x[:, 1] * 2) + x[:, 2] * x[:, 3] + rng.normal(scale=0.3, size=2000)
    model = RandomForestClassifier(n_estimators=100, max_depth=depth, random_state=0, n_jobs=1).fit(x, y > 0)
    probe = rng.normal(size=(100, 20))
    ensemble = from_sklearn(model)
    explainer = shap.TreeExplainer(model)
    ferry = TreeShap(ensemble)
    started = time.perf_counter()
    ferry._ready()  # paths and tables: built by a model's first explanation
    first = time.perf_counter() - started

    def check(rows: int) -> None:
        reference = np.asarray(explainer.shap_values(probe[:rows], check_additivity=False))  # [rows, F, classes]
        _close(ferry.explain(probe[:rows]).values, reference.transpose(0, 2, 1), "shap TreeExplainer")

    candidates: dict[str, Callable[[int], Call]] = {
        "ferry predict (raw score)": lambda n: lambda: ensemble.predict_raw(probe[:n]),
        "ferry explain": lambda n: lambda: ferry.explain(probe[:n]),
        "ferry explain, cold": lambda n: lambda: cold(ferry).explain(probe[:n]),
        "shap TreeExplainer": lambda n: lambda: explainer.shap_values(probe[:n], check_additivity=False),
    }
    return f"RandomForestClassifier (100 trees, depth {depth}, 20 columns)", candidates, check, first


def cold(explainer: TreeShap) -> TreeShap:
    """The explainer with no deeper-leaf answers kept: what rows never seen before cost."""
    for group in explainer.groups:
        if group.cache is not None:
            group.cache.clear()
    return explainer


def _close(mine: np.ndarray, reference: np.ndarray, what: str) -> None:
    scale = float(np.abs(reference).max())
    if not np.allclose(mine, reference, rtol=1e-9, atol=1e-12 * scale):
        raise AssertionError(f"ferry explain differs from {what}: max |diff| {np.abs(mine - reference).max():.3g}")


def race(candidates: dict[str, Callable[[int], Call]], rounds: int) -> dict[str, dict[int, list[float]]]:
    seen: dict[str, dict[int, list[float]]] = {name: {n: [] for n in ROWS} for name in candidates}
    for _ in range(rounds):
        for rows in ROWS:
            for name, make in candidates.items():
                seen[name][rows].append(timed(make(rows)) / rows)
    return seen


def table(title: str, seen: dict[str, dict[int, list[float]]], first: float) -> str:
    predict = {n: statistics.median(seen["ferry predict (raw score)"][n]) for n in ROWS}
    lines = [
        f"### {title}",
        "",
        f"Ferry's explainer built by the first explanation (paths and leaf tables): {first * 1000:.0f} ms.",
        "",
        "| candidate | " + " | ".join(f"{n} row{'s' if n > 1 else ''} (us/row)" for n in ROWS) + " | x ferry predict |",
        "|---|" + "---:|" * len(ROWS) + "---|",
    ]
    for name, times in seen.items():
        cells = [f"{statistics.median(times[n]) * 1e6:,.0f} ({min(times[n]) * 1e6:,.0f})" for n in ROWS]
        ratio = " / ".join(f"{statistics.median(times[n]) / predict[n]:.1f}" for n in ROWS)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, help="also write the tables here")
    parser.add_argument("--seconds", type=float, default=5.0, help="per route and round of the server part")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--server-only", action="store_true", help="only the server part (the reviews bundle built)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    sections = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.server_only:
            build_reviews(Path(tmp) / "repo")
        for make in () if args.server_only else (lambda: reviews(Path(tmp)), lambda: forest(6), lambda: forest(10)):
            title, candidates, check, first = make()
            for rows in ROWS:
                check(rows)
            sections.append(table(title, race(candidates, args.rounds), first))
            print(sections[-1] + "\n", flush=True)
        sections.append(serve(Path(tmp) / "repo", args))
        print(sections[-1] + "\n", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n\n".join([header(args), *sections]) + "\n")


def serve(repo: Path, args: argparse.Namespace) -> str:
    """Requests per second of predict and of explain, in turn, from one ``ferry serve`` of the reviews model."""
    import asyncio
    import socket
    import sys

    import aiohttp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "FERRY_GRPC_PORT": "0", "FERRY_PROBE_PORT": "0"}
    command = [sys.executable, "-m", "ferry", "serve", str(repo), "--port", str(port)]
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    texts = [r["text"] for r in load_reviews()][:100]

    async def load(route: str) -> float:
        done = 0
        async with aiohttp.ClientSession() as session:
            stop = time.perf_counter() + args.seconds

            async def client(start: int) -> None:
                nonlocal done
                i = start
                while time.perf_counter() < stop:
                    async with session.post(f"{url}/models/reviews/{route}", json={"text": texts[i % 100]}) as reply:
                        await reply.read()
                        if reply.status != 200:
                            raise RuntimeError(f"{route}: HTTP {reply.status}")
                    done, i = done + 1, i + args.concurrency

            started = time.perf_counter()
            await asyncio.gather(*(client(c) for c in range(args.concurrency)))
            return done / (time.perf_counter() - started)

    async def ready() -> None:
        """Until the server answers; then one explanation, which builds the explainer's tables (timed apart)."""
        async with aiohttp.ClientSession() as session:
            for _ in range(600):
                try:
                    async with session.get(f"{url}/ready") as reply:
                        if reply.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            else:
                raise RuntimeError("ferry serve did not become ready")
            async with session.post(f"{url}/models/reviews/explain", json={"text": texts[0]}) as reply:
                await reply.read()

    async def batched() -> str:
        """Rows per explanation call over the run (``ferry_explain_batch_size_rows``; absent before it existed)."""
        async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as reply:
            lines = (await reply.text()).splitlines()
        found = {kind: 0.0 for kind in ("count", "sum")}
        for line in lines:
            for kind in found:
                if line.startswith(f"ferry_explain_batch_size_rows_{kind}{{"):
                    found[kind] += float(line.rsplit(" ", 1)[1])
        return f"{found['sum'] / found['count']:.1f}" if found["count"] else "n/a"

    try:
        asyncio.run(ready())
        seen: dict[str, list[float]] = {"predict": [], "explain": []}
        for _ in range(2):
            for route in seen:
                seen[route].append(asyncio.run(load(route)))
        rows_per_call = asyncio.run(batched())
    finally:
        server.terminate()
        server.wait(timeout=30)
    predict, explain = (statistics.median(seen[r]) for r in ("predict", "explain"))
    return "\n".join(
        [
            "### ferry serve, reviews model, one review a request",
            "",
            f"{args.concurrency} clients, {args.seconds:g} s per route and round, 2 rounds in turn (median):",
            "",
            "| route | req/s | x predict |",
            "|---|---:|---:|",
            f"| POST /models/reviews/predict | {predict:,.0f} | 1.00 |",
            f"| POST /models/reviews/explain | {explain:,.0f} | {explain / predict:.2f} |",
            "",
            f"Rows per explanation call (ferry_explain_batch_size_rows, mean): {rows_per_call}.",
        ]
    )


def header(args: argparse.Namespace) -> str:
    from importlib.metadata import version

    names = ["numpy", "lightgbm", "scikit-learn", "shap"]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return (
        f"# bench/explain.py --rounds {args.rounds}\n\n"
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, ferry {commit}, load average at the end "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; "
        f"{', '.join(f'{n}=={version(n)}' for n in names)}.\n"
        "Microseconds per row: median over rounds (fastest round in brackets); the last column is each "
        "candidate's median over Ferry's own predict at 1 / 20 / 100 rows."
    )


if __name__ == "__main__":
    main()
