"""Ready time: milliseconds from exec of ``ferry serve`` to the first ``/ready`` 200, several runs each.

    python bench/ready.py REPO [REPO ...] [--runs 5] [--grpc off on] [--ferry ferry] [-- extra serve options]

Polls ``/ready`` every 2 ms (a connection refused is retried at once), so the figure is good to a few
milliseconds. Ferry's bytecode is compiled first, as ``pip install`` leaves it: a source checkout run
with PYTHONDONTWRITEBYTECODE=1 (this sandbox's default) would otherwise compile ~60 modules at every
start. Also prints the server's CPU time (user + system) until ready, which a machine shared with
other work inflates far less than wall time, and its RSS at ready. The probe listener runs, on a
free port. gRPC is measured off (``--grpc-port 0``) and on (the default, on a free port): ``/ready`` is
200 only once both ports listen. The runs alternate between the settings (every repository, gRPC off and
on, then again), so a shared machine's drift falls on all of them alike. One markdown row per repository
and gRPC setting: min / median / max over the runs.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def ready_once(
    ferry: str, repo: str, extra: list[str], grpc: bool, timeout_s: float = 60.0
) -> tuple[float, int, float]:
    port = free_port()
    # The probe listener runs as it does by default, on a free port (8082 may be another server's); so does gRPC.
    grpc_port = free_port() if grpc else 0
    argv = [ferry, "serve", repo, "--port", str(port), "--probe-port", str(free_port()), "--grpc-port", str(grpc_port)]
    argv += ["--log-level", "warning", *extra]
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while time.perf_counter() - started < timeout_s:
            if proc.poll() is not None:
                raise RuntimeError(f"ferry serve exited with {proc.returncode}: {' '.join(argv)}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
                conn.request("GET", "/ready")
                status = conn.getresponse().status
                conn.close()
            except OSError:
                status = 0
            if status == 200:
                elapsed = (time.perf_counter() - started) * 1000.0
                return elapsed, _rss_kib(proc.pid), _cpu_ms(proc.pid)
            time.sleep(0.002)
        raise RuntimeError(f"not ready after {timeout_s} s")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def compile_bytecode(ferry: str) -> None:
    """Compile the measured Ferry's modules (the package its script's Python imports) to .pyc."""
    python = Path(ferry).read_text().splitlines()[0].removeprefix("#!").strip()
    code = "import compileall, os, ferry; compileall.compile_dir(os.path.dirname(ferry.__file__), quiet=1)"
    subprocess.run([python, "-c", code], check=True)


def _cpu_ms(pid: int) -> float:
    """User + system CPU the server spent until ready: the figure a busy machine inflates least."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000.0 / os.sysconf("SC_CLK_TCK")


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("repos", nargs="+")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--grpc", nargs="+", choices=["off", "on"], default=["off", "on"])
    # The script next to this Python, not a pyenv shim: a shim adds a bash and a pyenv process to every start.
    beside = Path(sys.executable).parent / "ferry"
    parser.add_argument("--ferry", default=str(beside) if beside.exists() else shutil.which("ferry") or "ferry")
    args, extra = parser.parse_known_args()
    extra = [e for e in extra if e != "--"]
    print("| repository | gRPC | options | ready ms (min / median / max) | CPU ms to ready (median) | RSS (MiB) |")
    print("|---|---|---|---:|---:|---:|")
    compile_bytecode(args.ferry)
    # Runs alternate between the settings (repository x gRPC), so a shared machine's drift falls on all alike.
    cases = [(repo, grpc == "on") for repo in args.repos for grpc in args.grpc]
    for case in cases:
        ready_once(args.ferry, case[0], extra, case[1])  # one unmeasured run each warms the page cache
    results: dict[tuple[str, bool], list[tuple[float, int, float]]] = {case: [] for case in cases}
    for _ in range(args.runs):
        for case in cases:
            results[case].append(ready_once(args.ferry, case[0], extra, case[1]))
    for (repo, on), runs in results.items():
        times = sorted(t for t, _, _ in runs)
        rss = max(r for _, r, _ in runs) / 1024
        cpu = statistics.median(c for _, _, c in runs)
        row = f"{times[0]:.0f} / {statistics.median(times):.0f} / {times[-1]:.0f}"
        grpc = "on" if on else "off"
        print(f"| {repo} | {grpc} | {' '.join(extra) or '-'} | {row} | {cpu:.0f} | {rss:.0f} |", flush=True)


if __name__ == "__main__":
    main()
