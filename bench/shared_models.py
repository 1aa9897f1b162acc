"""Is a model's memory paid once whatever ``--workers``? A large model of each kind, PSS at 1, 2 and 4 workers.

    python bench/shared_models.py [--out FILE.md] [--kinds forest lightgbm ...] [--workdir DIR]

Builds one repository per kind (a bundle served as the framework's own object: ``--original-models``),
then runs ``bench/pss.py``'s measurement on each at 1, 2 and 4 workers: PSS summed over the server's
processes, gRPC off, once every worker is up and the server has answered 40 requests of the model's sample
(one connection each); also the anonymous part of PSS alone, which the rest of a shared machine does not
move. Two per-worker figures: 1 -> 4 workers counts the supervisor too (one worker runs without one),
2 -> 4 only the workers.
The kinds: a scikit-learn random forest (150 trees, skops), a LightGBM booster, an XGBoost booster, a
CatBoost model, an ONNX graph (that forest converted by skl2onnx) and a Python class holding 64 MiB of
numpy weights and a 200,000-entry dict. Also the compiled form of the forest (Ferry's default).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from pss import measure

FEATURES = [f"f{i}" for i in range(20)]
SAMPLE = json.dumps({name: 0.1 * i for i, name in enumerate(FEATURES)})
CLASS_SOURCE = '''
"""A Python class whose state is 64 MiB of numpy weights and a 200,000-entry dict of Python objects."""

from pathlib import Path

import numpy as np


class Wide:
    """Lifecycle: ``load()`` once, then ``predict(batch)`` per batch."""

    def load(self) -> None:
        rng = np.random.default_rng(0)
        self.weights = rng.standard_normal((20, 419_430))  # 64 MiB, on the heap (not memory-mapped)
        self.vocabulary = {f"token-{i}": (i, str(i)) for i in range(200_000)}

    def predict(self, batch):
        scores = np.asarray(batch, dtype=float) @ self.weights[:, :8]
        return [int(row.argmax()) + len(self.vocabulary) % 2 for row in scores]
'''


def data() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_classification

    return make_classification(n_samples=16_000, n_features=20, n_informative=10, random_state=0)


def forest(folder: Path) -> list[str]:
    import skops.io
    from sklearn.ensemble import RandomForestClassifier

    x, y = data()
    model = RandomForestClassifier(n_estimators=150, random_state=0, n_jobs=2).fit(x, y)
    model.set_params(n_jobs=None)
    skops.io.dump(model, folder / "forest.skops")
    onnx(folder, model)
    return [str(folder / "forest.skops")]


def onnx(folder: Path, model: object) -> None:
    from skl2onnx import to_onnx

    graph = to_onnx(model, np.zeros((1, 20), dtype=np.float32), options={"zipmap": False})
    (folder / "forest.onnx").write_bytes(graph.SerializeToString())


def lightgbm(folder: Path) -> list[str]:
    import lightgbm as lgb

    x, y = data()
    booster = lgb.train({"objective": "binary", "num_leaves": 63, "verbose": -1}, lgb.Dataset(x, y), 1000)
    booster.save_model(folder / "booster.txt")
    return [str(folder / "booster.txt")]


def xgboost(folder: Path) -> list[str]:
    import xgboost as xgb

    x, y = data()
    model = xgb.XGBClassifier(n_estimators=600, max_depth=8, n_jobs=2).fit(x, y)
    model.save_model(folder / "booster.json")
    return [str(folder / "booster.json")]


def catboost(folder: Path) -> list[str]:
    from catboost import CatBoostClassifier

    x, y = data()
    model = CatBoostClassifier(iterations=1500, depth=8, verbose=False, thread_count=2).fit(x, y)
    model.save_model(str(folder / "model.cbm"))
    return [str(folder / "model.cbm")]


def python_class(folder: Path) -> list[str]:
    (folder / "wide.py").write_text(CLASS_SOURCE)
    return [f"{folder / 'wide.py'}:Wide"]


BUILDERS: dict[str, Callable[[Path], list[str]]] = {
    "forest": forest,
    "lightgbm": lightgbm,
    "xgboost": xgboost,
    "catboost": catboost,
    "class": python_class,
}
# kind -> (what builds its file, the file or argument given to ferry build, serve options)
KINDS = {
    "forest (compiled, the default)": ("forest", None, []),
    "scikit-learn forest": ("forest", None, ["--original-models"]),
    "LightGBM booster": ("lightgbm", None, ["--original-models"]),
    "XGBoost booster": ("xgboost", None, ["--original-models"]),
    "CatBoost model": ("catboost", None, ["--original-models"]),
    "ONNX graph": ("forest", "forest.onnx", []),
    "Python class": ("class", None, ["--trust-code"]),
}


def build(workdir: Path, kind: str, builder: str, artifact: str | None, ferry: str) -> Path:
    repo = workdir / f"repo-{builder}-{artifact or 'own'}"
    if repo.exists():
        return repo
    made = (
        BUILDERS[builder](workdir)
        if not (workdir / f".{builder}").exists()
        else json.loads((workdir / f".{builder}").read_text())
    )
    (workdir / f".{builder}").write_text(json.dumps(made))
    model = [str(workdir / artifact)] if artifact else made
    argv = [ferry, "build", *model, "--name", "big", "--repo", str(repo), "--sample", SAMPLE]
    argv += ["--features", ",".join(FEATURES)]
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    size = sum(p.stat().st_size for p in (repo / "big" / "1").iterdir()) / 2**20
    print(f"built {kind}: {repo} ({size:.0f} MiB of files)", file=sys.stderr)
    return repo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--ferry", default=str(Path(sys.executable).parent / "ferry"))
    parser.add_argument("--requests", type=int, default=40)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ferry-shared-"))
    workdir.mkdir(parents=True, exist_ok=True)
    lines = [
        "| model | 1 / 2 / 4 workers: PSS MiB | 4 ÷ 1 | per extra worker, 1 → 4 (MiB) | per worker, 2 → 4 (MiB) "
        "| PSS anon, 1 / 2 / 4 (4 ÷ 1) | anon per worker, 2 → 4 (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    print("\n".join(lines), flush=True)
    for kind in args.kinds:
        builder, artifact, options = KINDS[kind]
        repo = build(workdir, kind, builder, artifact, args.ferry)
        _, _, one, one_anon = measure(args.ferry, str(repo), 1, False, options, args.requests)
        _, _, two, two_anon = measure(args.ferry, str(repo), 2, False, options, args.requests)
        _, _, four, four_anon = measure(args.ferry, str(repo), 4, False, options, args.requests)
        anon = f"{one_anon:.0f} / {two_anon:.0f} / {four_anon:.0f} ({four_anon / one_anon:.2f})"
        pss = f"{one:.0f} / {two:.0f} / {four:.0f}"
        row = f"| {kind} | {pss} | {four / one:.2f} | {(four - one) / 3:.1f} | {(four - two) / 2:.1f} | {anon} "
        row += f"| {(four_anon - two_anon) / 2:.1f} |"
        print(row, flush=True)
        lines.append(row)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
