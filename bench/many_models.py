"""Many models under a memory budget: 1,000 small linear models served by one ``ferry serve --max-memory 1GiB``.

    python bench/many_models.py [--models 1000] [--max-memory 1GiB] [--repo DIR] [-- extra serve options]

Builds the models with ``ferry.build`` (model ``m<i>`` answers ``10 + i`` on all-ones input) into
``--repo`` (kept, and reused when it already holds them), starts the server with ``--no-preload`` so
every first call is a cold load, and reports: ready time (the index verified), first-call latency
p50/p99 (one client, every model once, in order), hit latency p50/p99 (every model again), failures
(non-200 or a wrong answer), the loaded bytes the server reports, and the server's RSS.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

FEATURES = ["a", "b", "c", "d"]
BODY = json.dumps(dict.fromkeys(FEATURES, 1.0)).encode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def build_repo(repo: Path, models: int) -> float:
    """Build what is missing; the seconds it took."""
    import numpy as np
    from sklearn.linear_model import LinearRegression

    import ferry

    started = time.perf_counter()
    x = np.random.default_rng(0).random((20, 4))
    for i in range(models):
        if not (repo / f"m{i}" / "1" / "ferry.yaml").is_file():
            model = LinearRegression().fit(x, x @ [1.0, 2.0, 3.0, 4.0] + i)
            ferry.build(model, f"m{i}", repo, version="1", features=FEATURES)
    return time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100.0 * (len(ordered) - 1)))]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def one_pass(conn: http.client.HTTPConnection, models: int) -> tuple[list[float], int]:
    """Latency in ms of one call to every model in order, and how many failed."""
    latencies, failures = [], 0
    for i in range(models):
        started = time.perf_counter()
        conn.request("POST", f"/models/m{i}/predict", BODY, {"Content-Type": "application/json"})
        answer = conn.getresponse()
        body = answer.read()
        latencies.append((time.perf_counter() - started) * 1000.0)
        if answer.status != 200 or abs(json.loads(body)["prediction"] - (10.0 + i)) > 1e-6:
            failures += 1
    return latencies, failures


def get_json(port: int, path: str) -> dict[str, object]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", path)
    data: dict[str, object] = json.loads(conn.getresponse().read())
    conn.close()
    return data


def loaded_bytes(port: int) -> tuple[int, int]:
    """(models READY, their bytes) as ``/models`` reports them."""
    listing = get_json(port, "/models")["models"]
    assert isinstance(listing, list)
    versions = [v for m in listing for v in m["versions"]]
    return sum(v["state"] == "READY" for v in versions), sum(v.get("bytes", 0) for v in versions)


def serve(repo: Path, budget: str, extra: list[str]) -> tuple[subprocess.Popen[bytes], int, float]:
    port = free_port()
    argv = [sys.executable, "-m", "ferry", "serve", str(repo), "--port", str(port), "--grpc-port", "0"]
    argv += ["--probe-port", "0", "--log-level", "warning", "--no-access-log", "--max-memory", budget, *extra]
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"ferry serve exited with {proc.returncode}: {' '.join(argv)}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
            conn.request("GET", "/ready")
            if conn.getresponse().status == 200:
                return proc, port, (time.perf_counter() - started) * 1000.0
        except OSError:
            pass
        if time.perf_counter() - started > 300:
            proc.terminate()
            raise RuntimeError("not ready after 300 s")
        time.sleep(0.005)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--max-memory", default="1GiB")
    parser.add_argument("--repo", type=Path, default=Path("/tmp/ferry-bench-many"))
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"] or ["--no-preload"]
    built = build_repo(args.repo, args.models)
    print(f"built {args.models} models in {args.repo} ({built:.0f} s)")
    print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    proc, port, ready_ms = serve(args.repo, args.max_memory, extra)
    try:
        rss_ready = rss_mib(proc.pid)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        first, first_failed = one_pass(conn, args.models)
        rss_first = rss_mib(proc.pid)
        hits, hit_failed = one_pass(conn, args.models)
        rss_hits = rss_mib(proc.pid)
        ready, held = loaded_bytes(port)
        conn.close()
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"serve options: --max-memory {args.max_memory} {' '.join(extra)}")
    print("| models | ready (index verified) | first call p50 / p99 | hit p50 / p99 | failures | loaded | RSS |")
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {args.models:,} | {ready_ms:,.0f} ms "
        f"| {statistics.median(first):.1f} / {percentile(first, 99):.1f} ms "
        f"| {statistics.median(hits):.2f} / {percentile(hits, 99):.2f} ms "
        f"| {first_failed + hit_failed} of {2 * args.models:,} "
        f"| {ready:,} models, {held / 2**20:.0f} MiB estimated "
        f"| {rss_ready:.0f} MiB at ready, {rss_first:.0f} after first calls, {rss_hits:.0f} after hits |"
    )


if __name__ == "__main__":
    main()
