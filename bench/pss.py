"""Memory of a ``ferry serve`` process tree: RSS and PSS (proportional set size), summed over every process.

    python bench/pss.py REPO [--workers 1 4] [--grpc off on] [--requests 40] [--ferry PATH] [-- extra serve options]

PSS splits each shared page between the processes that map it, so the sum over a server's processes is
what the server as a whole costs the machine (read from /proc/PID/smaps_rollup). Its file-backed part (the
interpreter's and the libraries' code) is also split with every other process on the machine that maps the
same files, so on a shared machine PSS moves by tens of MiB with what else runs; the anonymous part (``Pss_Anon``:
the heap, the models) is split only among the server's own processes, and is printed too. Each server is measured
once it is ready, every worker is up, and it has answered ``--requests`` requests per model (each model's
sample, ``GET /models/NAME/predict/test``, one connection each, so the workers share them).
gRPC is measured off (``--grpc-port 0``) and on (the default, on a free port).
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants, started from any of its threads (a trial load's resource tracker, say)."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            found += tree(int(child))
    return found


def rollup(pid: int) -> dict[str, int]:
    values = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        values[key] = int(value.split()[0])
    return values


def get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def exercise(port: int, requests: int) -> None:
    """``requests`` predictions of each model's sample, each on its own connection (so spread over the workers)."""
    names = [m["name"] for m in json.loads(get(port, "/models")[1])["models"]]
    for name in names:
        for _ in range(requests):
            status, body = get(port, f"/models/{name}/predict/test")
            if status != 200:
                raise RuntimeError(f"{name}: {status} {body[:200]!r}")


def measure(
    ferry: str, repo: str, workers: int, grpc: bool, extra: list[str], requests: int = 40
) -> tuple[int, float, float, float]:
    port = free_port()
    grpc_port = free_port() if grpc else 0
    argv = [ferry, "serve", repo, "--port", str(port), "--probe-port", str(free_port()), "--grpc-port", str(grpc_port)]
    argv += ["--log-level", "warning"]
    proc = subprocess.Popen([*argv, "--workers", str(workers), *extra], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"ferry serve exited with {proc.returncode}: {' '.join(argv)}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/ready")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.05)
        time.sleep(3.0 if workers > 1 else 0.5)  # every worker up and warm
        exercise(port, requests)
        time.sleep(0.5)
        pids = tree(proc.pid)
        rolls = [rollup(p) for p in pids]
        rss, pss, anon = (sum(r[key] for r in rolls) / 1024 for key in ("Rss", "Pss", "Pss_Anon"))
        return len(pids), rss, pss, anon
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("repo")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--grpc", nargs="+", choices=["off", "on"], default=["off", "on"])
    parser.add_argument("--requests", type=int, default=40, help="predictions per model before measuring")
    beside = Path(sys.executable).parent / "ferry"
    parser.add_argument("--ferry", default=str(beside))
    args, extra = parser.parse_known_args()
    extra = [e for e in extra if e != "--"]
    print("| workers | gRPC | options | processes | RSS sum (MiB) | PSS sum (MiB) | PSS / 1 worker | PSS anon (MiB) |")
    print("|---:|---|---|---:|---:|---:|---:|---:|")
    for grpc in args.grpc:
        base = None
        for workers in args.workers:
            count, rss, pss, anon = measure(args.ferry, args.repo, workers, grpc == "on", extra, args.requests)
            base = base or pss
            cells = [workers, grpc, " ".join(extra) or "-", count, f"{rss:.0f}", f"{pss:.0f}", f"{pss / base:.2f}"]
            cells.append(f"{anon:.0f}")
            print("| " + " | ".join(map(str, cells)) + " |", flush=True)


if __name__ == "__main__":
    main()
