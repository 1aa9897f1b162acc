"""A mixed-type pipeline's req/s behind Ferry and behind a hand-written Flask app (and MLServer, if given), one run.

The model is the standard tabular recipe (issue 21): a scikit-learn Pipeline whose ColumnTransformer one-hot
encodes two text columns and scales two numeric ones, before a LogisticRegression, fitted on a DataFrame and
saved with joblib. Ferry serves it from ``ferry build``; Flask (bench/tabular_flask.py, under gunicorn, one sync
worker) builds the DataFrame by hand; MLServer (``--mlserver-python``: a venv's python with mlserver and
mlserver-sklearn) serves the same joblib with its pandas codec. Every server's answer is checked against the
model's own predict first. wrk (one thread, pinned to CPU 0) sends one row per request over keep-alive
connections; the servers run one process each, pinned to CPU 1; the rounds alternate between servers.

Run: python bench/tabular.py [--seconds 10] [--connections 16] [--rounds 2] [--mlserver-python /tmp/venv/bin/python]
     [--gunicorn-path DIR]   (a folder holding gunicorn, e.g. from pip install --target DIR gunicorn)
Writes bench/results/tabular-DATE.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

BENCH = Path(__file__).resolve().parent
ROW = {"sex": "female", "pclass": 1, "age": 29.0, "embarked": "S"}
V2_BODY = {
    "parameters": {"content_type": "pd"},  # MLServer's pandas codec; Ferry reads the columns as they come
    "inputs": [
        {"name": "sex", "datatype": "BYTES", "shape": [1], "data": ["female"]},
        {"name": "pclass", "datatype": "INT64", "shape": [1], "data": [1]},
        {"name": "age", "datatype": "FP64", "shape": [1], "data": [29.0]},
        {"name": "embarked", "datatype": "BYTES", "shape": [1], "data": ["S"]},
    ],
}


def pipeline() -> Pipeline:
    rng = np.random.default_rng(0)
    n = 1000
    frame = pd.DataFrame(
        {
            "sex": rng.choice(["male", "female"], n),
            "pclass": rng.integers(1, 4, n),
            "age": rng.normal(30, 10, n).round(1),
            "embarked": rng.choice(["C", "Q", "S"], n),
        }
    )
    survived = ((frame.sex == "female") & (frame.pclass < 3) | (frame.age < 20)).astype(int)
    columns = ColumnTransformer(
        [
            ("text", OneHotEncoder(handle_unknown="ignore"), ["sex", "embarked"]),
            ("numbers", StandardScaler(), ["age", "pclass"]),
        ]
    )
    return Pipeline([("columns", columns), ("model", LogisticRegression())]).fit(frame, survived)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def post(url: str, body: object) -> object:
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@contextlib.contextmanager
def server(argv: list[str], ready_url: str, env: dict[str, str], cwd: Path) -> Iterator[subprocess.Popen[bytes]]:
    log = (cwd / f"server-{free_port()}.log").open("wb")
    proc = subprocess.Popen(["taskset", "-c", "1", *argv], env={**os.environ, **env}, cwd=cwd, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{argv[:3]} exited with {proc.returncode}; see {log.name}")
            with contextlib.suppress(OSError):
                if urllib.request.urlopen(ready_url, timeout=1).status == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{argv[:3]} not ready; see {log.name}")
            time.sleep(0.2)
        yield proc
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def wrk(url: str, body: object, connections: int, seconds: float, folder: Path) -> dict[str, float]:
    script = folder / "post.lua"
    payload = json.dumps(body).replace("\\", "\\\\").replace("'", "\\'")
    script.write_text(
        f"wrk.method = 'POST'\nwrk.headers['Content-Type'] = 'application/json'\nwrk.body = '{payload}'\n"
    )
    argv = ["taskset", "-c", "0", "wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency"]
    out = subprocess.run([*argv, "-s", str(script), url], capture_output=True, text=True, check=True).stdout
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    result["failed"] = (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, errors.groups())) if errors else 0)
    for name, pattern in (("p50", r"50%\s+([\d.]+)(us|ms|s)"), ("p99", r"99%\s+([\d.]+)(us|ms|s)")):
        found = re.search(pattern, out)
        if found:
            result[name] = float(found.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[found.group(2)]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", default="1,16", help="comma-separated: one measurement per count")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--mlserver-python", help="a python with mlserver and mlserver-sklearn (its own venv)")
    parser.add_argument("--gunicorn-path", help="a folder holding the gunicorn package (PYTHONPATH for Flask)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="ferry-tabular-"))
    model = pipeline()
    joblib.dump(model, folder / "titanic.joblib")
    expected = {"prediction": int(model.predict(pd.DataFrame([ROW]))[0])}
    ferry = [sys.executable, "-m", "ferry"]
    subprocess.run(
        [*ferry, "build", "titanic.joblib", "--name", "titanic", "--repo", "models", "--trusted"],
        cwd=folder,
        check=True,
        capture_output=True,
    )

    servers: dict[str, tuple[list[str], dict[str, str], str, object]] = {}
    port = free_port()
    serve = [*ferry, "serve", "models", "--port", str(port), "--grpc-port", "0", "--probe-port", "0"]
    serve += ["--trust-pickle", "--log-level", "warning"]
    servers["Ferry (native JSON)"] = (serve, {}, f"http://127.0.0.1:{port}/models/titanic/predict", ROW)
    servers["Ferry (Open Inference v2)"] = (serve, {}, f"http://127.0.0.1:{port}/v2/models/titanic/infer", V2_BODY)
    flask_port = free_port()
    flask_env = {"TABULAR_MODEL": str(folder / "titanic.joblib"), "PYTHONPATH": str(BENCH)}
    if args.gunicorn_path:
        flask_env["PYTHONPATH"] += os.pathsep + args.gunicorn_path
    flask = [sys.executable, "-m", "gunicorn", "-w", "1", "-k", "sync", "-b", f"127.0.0.1:{flask_port}"]
    servers["Flask (gunicorn, 1 sync worker)"] = (
        [*flask, "tabular_flask:app"],
        flask_env,
        f"http://127.0.0.1:{flask_port}/predict",
        ROW,
    )
    if args.mlserver_python:
        mls = folder / "mlserver"
        (mls / "titanic").mkdir(parents=True)
        settings = {"name": "titanic", "implementation": "mlserver_sklearn.SKLearnModel"}
        settings["parameters"] = {"uri": str(folder / "titanic.joblib")}  # type: ignore[assignment]
        (mls / "titanic" / "model-settings.json").write_text(json.dumps(settings))
        mls_port, mls_grpc, mls_metrics = free_port(), free_port(), free_port()
        (mls / "settings.json").write_text(
            json.dumps(
                {
                    "http_port": mls_port,
                    "grpc_port": mls_grpc,
                    "metrics_port": mls_metrics,
                    "parallel_workers": 0,
                    "debug": False,
                }
            )
        )
        mlserver = [str(Path(args.mlserver_python).parent / "mlserver"), "start", str(mls)]
        servers["MLServer (Open Inference v2, pandas codec)"] = (
            mlserver,
            {},
            f"http://127.0.0.1:{mls_port}/v2/models/titanic/infer",
            V2_BODY,
        )

    counts = [int(c) for c in args.connections.split(",")]
    figures: dict[tuple[str, int], list[dict[str, float]]] = {(n, c): [] for n in servers for c in counts}
    for _ in range(args.rounds):
        for name, (argv, env, url, body) in servers.items():
            base = url.split("/", 3)
            ready = f"{base[0]}//{base[2]}" + ("/health" if "Flask" in name else "/v2/health/ready")
            with server(argv, ready, env, folder):
                answer = post(url, body)
                check_answer(name, answer, expected["prediction"])
                for count in counts:
                    wrk(url, body, count, 1.0, folder)  # warm-up
                    figures[name, count].append(wrk(url, body, count, args.seconds, folder))
    write(figures, args, args.out)


def check_answer(name: str, answer: object, label: int) -> None:
    """The same class as the model's own predict, whatever the protocol."""
    assert isinstance(answer, dict), answer
    got = answer["outputs"][0]["data"][0] if "outputs" in answer else answer.get("prediction")
    if got != label:
        raise RuntimeError(f"{name} answered {answer}, the model's predict {label}")


def write(figures: dict[tuple[str, int], list[dict[str, float]]], args: argparse.Namespace, out: Path | None) -> None:
    now = datetime.now(UTC)
    load = os.getloadavg()[0]
    lines = [
        f"# bench/tabular.py, {now:%Y-%m-%d %H:%M} UTC (shared 2-CPU machine, load average {load:.1f})",
        "",
        f"A mixed-type Pipeline (OneHotEncoder on 2 text columns, StandardScaler on 2 numeric, LogisticRegression), "
        f"one row per request, wrk -t1 for {args.seconds:g} s (CPU 0) over keep-alive connections, each server one "
        f"process (CPU 1); median of {args.rounds} alternating rounds. Every answer checked against the model's "
        "predict first.",
        "",
        "| server | connections | req/s | p50 ms | p99 ms | failed |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for (name, count), runs in figures.items():
        rps = statistics.median(r["rps"] for r in runs)
        p50 = statistics.median(r.get("p50", float("nan")) for r in runs)
        p99 = statistics.median(r.get("p99", float("nan")) for r in runs)
        failed = sum(int(r["failed"]) for r in runs)
        lines.append(f"| {name} | {count} | {rps:,.0f} | {p50:.2f} | {p99:.2f} | {failed} |")
    text = "\n".join(lines) + "\n"
    path = out or BENCH / "results" / f"tabular-{now:%Y-%m-%d}.md"
    path.write_text(text)
    print(text)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
