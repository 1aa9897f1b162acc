"""Tree evaluators side by side, in one process: Ferry's numpy evaluator against the framework itself,
treelite (GTIL, its interpreter; and compiled to C by tl2cgen) and lleaves (LLVM, LightGBM only).

    python bench/trees.py [--rounds 15] [--calls 30] [--out FILE.md]

Models: the reviews example's LightGBM booster (200 trees of 15 leaves over 16,384 hashed n-gram
columns, built as ``ferry examples build`` builds it, fed real review texts), and two scikit-learn
models on 20 dense columns: a RandomForestClassifier and a GradientBoostingRegressor; an XGBRegressor and a
CatBoostRegressor (200 trees of depth 6, read from the JSON their libraries save) against XGBoost's
``inplace_predict`` margin and CatBoost's ``RawFormulaVal`` (``--boosters-only`` runs just these two).
Per candidate: the load/compile time, once; then per-call latency for 1, 20 and 100 rows. Each round
runs every candidate and batch size in turn (``--calls`` calls each), so a shared machine's noise falls
on all of them alike; the table gives the median over rounds (and the fastest round) of the time per
call. "exact" says whether the candidate's raw scores equal the framework's bit for bit.
Ferry's candidates: ``numpy`` (what serving runs: QuickScorer below 64 rows, level by level above),
``level walk`` (level by level at every size), and for the text model ``numpy, compact rows`` (the
446 columns the trees read, as the text runtime hands them; the others get all 16,384).
Also the text featurizer: Ferry's HashedCharNgrams against scikit-learn's HashingVectorizer.

treelite, tl2cgen and lleaves come with the ``bench`` extra; a candidate whose package is missing is
skipped with a note. Needs gcc for tl2cgen. lleaves compiles in a child process, given
``--lleaves-limit`` seconds (on the reviews booster it had not finished after 10 minutes).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ferry.examples.build import REVIEW_FEATURIZER, build_reviews, load_reviews
from ferry.runtimes import trees
from ferry.runtimes.load import load_bundle
from ferry.runtimes.textfeatures import HashedCharNgrams

ROWS = (1, 20, 100)
Predict = Callable[[np.ndarray], np.ndarray]


class Skipped(Exception):
    """A candidate that could not be made ready: the reason goes in the report."""


class Candidate:
    def __init__(self, name: str, load: Callable[[], Predict], compact: bool = False) -> None:
        self.name, self.compact = name, compact
        started = time.perf_counter()
        self.predict = load()
        self.load_s = time.perf_counter() - started
        self.samples: dict[int, list[float]] = {rows: [] for rows in ROWS}
        self.exact = True


def timed(predict: Predict, x: np.ndarray, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        predict(x)
    return (time.perf_counter() - started) / calls


def level_walk(ensemble: trees.TreeEnsemble) -> Predict:
    """Ferry's level-by-level walk at every batch size (QuickScorer switched off)."""

    def predict(x: np.ndarray) -> np.ndarray:
        trees.WALK = "levels"
        try:
            return ensemble.predict_compact(x)
        finally:
            trees.WALK = None

    return predict


# -- candidates --------------------------------------------------------------------------------------
def treelite_candidates(model: Any, kind: str, workdir: Path) -> list[tuple[str, Callable[[], Predict]]]:
    try:
        import tl2cgen
        import treelite
    except ImportError:
        print("treelite / tl2cgen not installed: skipped (pip install -e '.[bench]')")
        return []

    def imported() -> Any:
        if kind == "lightgbm":
            return treelite.frontend.from_lightgbm(model)
        return treelite.sklearn.import_model(model)

    def gtil() -> Predict:
        tl = imported()
        return lambda x: treelite.gtil.predict(tl, x, pred_margin=True)

    def compiled() -> Predict:
        libpath = workdir / f"{kind}-{id(model)}.so"
        tl2cgen.export_lib(imported(), toolchain="gcc", libpath=str(libpath), params={"parallel_comp": 8}, nthread=1)
        predictor = tl2cgen.Predictor(str(libpath), nthread=1)
        return lambda x: predictor.predict(tl2cgen.DMatrix(x, dtype="float64"), pred_margin=True)

    return [("treelite gtil", gtil), ("treelite+tl2cgen .so", compiled)]


LLEAVES_COMPILE = """
import sys, lleaves
lleaves.Model(model_file=sys.argv[1]).compile(cache=sys.argv[2], raw_score=True, finline=False)
"""


def lleaves_candidate(model_file: Path, workdir: Path, limit_s: float) -> list[tuple[str, Callable[[], Predict]]]:
    """lleaves compiles with LLVM when it loads; here in a child process, stopped after ``limit_s``."""
    try:
        import lleaves
    except ImportError:
        print("lleaves not installed: skipped (pip install -e '.[bench]')")
        return []

    def load() -> Predict:
        cache = workdir / "lleaves.o"
        argv = [sys.executable, "-c", LLEAVES_COMPILE, str(model_file), str(cache)]
        try:
            subprocess.run(argv, check=True, timeout=limit_s)
        except subprocess.TimeoutExpired:
            raise Skipped(f"lleaves: no compiled model after {limit_s:.0f} s (LLVM, finline=False)") from None
        model = lleaves.Model(model_file=str(model_file))
        model.compile(cache=str(cache), raw_score=True)
        return lambda x: model.predict(x, n_jobs=1)

    return [("lleaves (LLVM, compiled in a child)", load)]


SKIPPED: list[str] = []


def ready(makers: list[tuple[str, Callable[[], Predict]]]) -> list[Candidate]:
    made = []
    for name, load in makers:
        try:
            made.append(Candidate(name, load))
        except Skipped as why:
            SKIPPED.append(str(why))
            print(why, flush=True)
    return made


def reviews(
    workdir: Path, lleaves_limit_s: float
) -> tuple[list[Candidate], dict[int, np.ndarray], dict[int, np.ndarray], Predict]:
    """The reviews booster and its candidates; full-width and compact rows of real texts."""
    import lightgbm

    bundle = build_reviews(workdir / "repo")
    runtime: Any = load_bundle(bundle).runtime
    ensemble = runtime.program.trees.ensemble
    texts = [r["text"] for r in load_reviews()]
    full_featurizer = HashedCharNgrams(REVIEW_FEATURIZER, np.arange(runtime.featurizer.n_features))
    full = {rows: full_featurizer.transform(texts[:rows]) for rows in ROWS}
    compact = {rows: runtime.featurizer.transform(texts[:rows]) for rows in ROWS}
    model_file = bundle / "model.txt"

    def booster() -> Predict:
        b = lightgbm.Booster(model_file=str(model_file))
        return lambda x: b.predict(x, raw_score=True, num_threads=1)

    def ferry_numpy() -> Predict:
        loaded: Any = load_bundle(bundle).runtime
        return loaded.program.trees.ensemble.predict_raw  # type: ignore[no-any-return]

    def ferry_compact() -> Predict:
        loaded: Any = load_bundle(bundle).runtime
        return loaded.program.trees.ensemble.predict_compact  # type: ignore[no-any-return]

    reference = lightgbm.Booster(model_file=str(model_file))
    made = [
        Candidate("lightgbm Booster.predict", booster),
        Candidate("ferry numpy", ferry_numpy),
        Candidate("ferry numpy, compact rows", ferry_compact, compact=True),
        Candidate("ferry level walk, compact rows", lambda: level_walk(ensemble), compact=True),
    ]
    made += ready(treelite_candidates(reference, "lightgbm", workdir))
    made += ready(lleaves_candidate(model_file, workdir, lleaves_limit_s))
    return made, full, compact, lambda x: reference.predict(x, raw_score=True)


def sklearn_models(workdir: Path) -> list[tuple[str, list[Candidate], dict[int, np.ndarray], Predict]]:
    from sklearn.ensemble import GradientBoostingRegressor, RandomForestClassifier

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 20))
    y = x[:, 0] + np.sin(x[:, 1] * 2) + x[:, 2] * x[:, 3] + rng.normal(scale=0.3, size=2000)
    models = {
        "RandomForestClassifier(100 trees, depth 10)": (
            RandomForestClassifier(n_estimators=100, max_depth=10, random_state=0, n_jobs=1).fit(x, y > 0),
            lambda m, rows: m.predict_proba(rows),
        ),
        "GradientBoostingRegressor(200 trees, depth 3)": (
            GradientBoostingRegressor(n_estimators=200, max_depth=3, random_state=0).fit(x, y),
            lambda m, rows: m.predict(rows),
        ),
    }
    probe = {rows: rng.normal(size=(rows, 20)) for rows in ROWS}
    out = []
    for title, (model, native) in models.items():
        ensemble = trees.from_sklearn(model)

        def framework(model: Any = model, native: Any = native) -> Predict:
            return lambda rows: native(model, rows)

        def ferry_numpy(model: Any = model) -> Predict:
            return trees.from_sklearn(model).predict_raw

        made = [
            Candidate("scikit-learn predict", framework),
            Candidate("ferry numpy (export + first call)", ferry_numpy),
            Candidate("ferry level walk", lambda e=ensemble: level_walk(e)),
        ]
        made += ready(treelite_candidates(model, "sklearn", workdir))
        out.append((title, made, probe, framework()))
    return out


def booster_models(workdir: Path) -> list[tuple[str, list[Candidate], dict[int, np.ndarray], Predict]]:
    """XGBoost and CatBoost models as their libraries save them, against the libraries' own predict."""
    import json

    try:
        import catboost
        import xgboost
    except ImportError as missing:
        SKIPPED.append(f"XGBoost / CatBoost: {missing}")
        return []
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 20))
    y = x[:, 0] + np.sin(x[:, 1] * 2) + x[:, 2] * x[:, 3] + rng.normal(scale=0.3, size=2000)
    probe = {rows: rng.normal(size=(rows, 20)) for rows in ROWS}
    out = []

    xgb = xgboost.XGBRegressor(n_estimators=200, max_depth=6, n_jobs=1).fit(x, y)
    xgb.save_model(workdir / "xgb.json")
    booster = xgb.get_booster()

    def xgb_margin(rows: np.ndarray) -> np.ndarray:
        return np.asarray(booster.inplace_predict(rows, predict_type="margin"))

    def xgb_ferry() -> Predict:
        return trees.from_xgboost(json.loads((workdir / "xgb.json").read_text()))[0].predict_raw

    made = [Candidate("xgboost inplace_predict", lambda: xgb_margin), Candidate("ferry numpy", xgb_ferry)]
    out.append(("XGBRegressor(200 trees, depth 6), from its JSON", made, probe, xgb_margin))

    cat = catboost.CatBoostRegressor(iterations=200, depth=6, verbose=0, thread_count=1).fit(x, y)
    cat.save_model(str(workdir / "cat.json"), format="json")

    def cat_raw(rows: np.ndarray) -> np.ndarray:
        return np.asarray(cat.predict(rows, prediction_type="RawFormulaVal", thread_count=1))

    def cat_ferry() -> Predict:
        return trees.from_catboost(json.loads((workdir / "cat.json").read_text())).predict_raw

    made = [Candidate("catboost predict", lambda: cat_raw), Candidate("ferry numpy", cat_ferry)]
    out.append(("CatBoostRegressor(200 trees, depth 6), from its JSON", made, probe, cat_raw))
    return out


# -- running -----------------------------------------------------------------------------------------
def race(
    candidates: list[Candidate],
    full: dict[int, np.ndarray],
    compact: dict[int, np.ndarray] | None,
    reference: Predict,
    rounds: int,
    calls: int,
) -> None:
    for c in candidates:  # warm each (first-call tables) and check its scores against the framework's
        for rows in ROWS:
            x = compact[rows] if c.compact and compact is not None else full[rows]
            got = np.asarray(c.predict(x), dtype=np.float64).reshape(rows, -1)
            want = np.asarray(reference(full[rows]), dtype=np.float64).reshape(rows, -1)
            if got.shape != want.shape and got.shape[1] == 1 and want.shape[1] == 2:  # treelite: p only
                want = want[:, 1:]
            c.exact = c.exact and got.shape == want.shape and bool(np.array_equal(got, want))
    for _ in range(rounds):
        for rows in ROWS:
            for c in candidates:
                x = compact[rows] if c.compact and compact is not None else full[rows]
                c.samples[rows].append(timed(c.predict, x, max(1, calls // rows * 4 if rows > 1 else calls)))


def table(title: str, candidates: list[Candidate]) -> str:
    lines = [
        f"### {title}",
        "",
        "| candidate | load/compile (s) | exact | "
        + " | ".join(f"{rows} row{'s' if rows > 1 else ''} (us/call)" for rows in ROWS)
        + " |",
        "|---|---:|:-:|" + "---:|" * len(ROWS),
    ]
    for c in candidates:
        cells = [
            f"{statistics.median(c.samples[rows]) * 1e6:,.0f} ({min(c.samples[rows]) * 1e6:,.0f})" for rows in ROWS
        ]
        lines.append(f"| {c.name} | {c.load_s:.2f} | {'yes' if c.exact else 'NO'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def featurizer_table(rounds: int, calls: int) -> str:
    from ferry.runtimes.lightgbm import make_featurizer

    texts = [r["text"] for r in load_reviews()]
    sklearn_vectorizer = make_featurizer(REVIEW_FEATURIZER)
    n = int(REVIEW_FEATURIZER.get("n_features", 2**14))
    mine = HashedCharNgrams(REVIEW_FEATURIZER, np.arange(0, n, 37))  # ~440 columns, as the trees read
    fns = {"ferry HashedCharNgrams": mine.transform, "scikit-learn HashingVectorizer": sklearn_vectorizer.transform}
    samples: dict[tuple[str, int], list[float]] = {(f, r): [] for f in fns for r in ROWS}
    for _ in range(rounds):
        for rows in ROWS:
            for name, fn in fns.items():
                samples[name, rows].append(timed(fn, texts[:rows], max(1, calls // rows * 4 if rows > 1 else calls)))
    lines = [
        "### Text featurizer (reviews texts)",
        "",
        "| featurizer | " + " | ".join(f"{r} rows (us/call)" for r in ROWS) + " |",
        "|---|" + "---:|" * len(ROWS),
    ]
    for name in fns:
        lines.append(
            f"| {name} | " + " | ".join(f"{statistics.median(samples[name, r]) * 1e6:,.0f}" for r in ROWS) + " |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=30, help="calls per 1-row sample (fewer for bigger batches)")
    parser.add_argument("--out", type=Path, help="also write the tables here")
    parser.add_argument("--boosters-only", action="store_true", help="only the XGBoost and CatBoost models")
    parser.add_argument("--lleaves-limit", type=float, default=600, help="seconds lleaves may take to compile")
    args = parser.parse_args()
    sections = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if not args.boosters_only:
            candidates, full, compact, reference = reviews(work, args.lleaves_limit)
            race(candidates, full, compact, reference, args.rounds, args.calls)
            sections.append(table("LightGBM reviews (200 trees x 15 leaves, 16,384 columns)", candidates))
            print(sections[-1], flush=True)
        for title, made, probe, framework in [
            *([] if args.boosters_only else sklearn_models(work)),
            *booster_models(work),
        ]:
            race(made, probe, None, framework, args.rounds, args.calls)
            sections.append(table(title, made))
            print(sections[-1], flush=True)
    if not args.boosters_only:
        sections.append(featurizer_table(args.rounds, args.calls))
        print(sections[-1])
    sections += [f"Skipped: {why}" for why in SKIPPED]
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n\n".join([header(args), *sections]) + "\n")


def header(args: argparse.Namespace) -> str:
    from importlib.metadata import PackageNotFoundError, version

    def have(name: str) -> str:
        try:
            return f"{name}=={version(name)}"
        except PackageNotFoundError:
            return f"{name} (absent)"

    names = ["numpy", "lightgbm", "scikit-learn", "xgboost", "catboost", "treelite", "tl2cgen", "lleaves", "llvmlite"]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return (
        f"# bench/trees.py --rounds {args.rounds} --calls {args.calls}\n\n"
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, ferry {commit}, load average at the end "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; {', '.join(map(have, names))}.\n"
        "Per-call times: median over rounds (fastest round in brackets)."
    )


if __name__ == "__main__":
    main()
