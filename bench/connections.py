"""Connection-layer reliability, Ferry side by side with a plain FastAPI + uvicorn app on the same iris model.

    python bench/reliability.py connections [--seconds 10] [--multiple 10]

Each server runs alone, pinned to CPU 1 (``taskset -c 1``); the load generators run on CPU 0. Rows:

1. capacity: wrk, 64 keep-alive connections, POST /predict;
2. an idle server, probed as below: the floor that this machine's scheduling sets;
   1,000 keep-alive connections saturating predict (wrk -c1000): fresh-connection GET /health
   every 50 ms (and Ferry's probe port);
3. 2,000 slowloris connections, each holding half a request head for 15 s (a byte every 0.2 s): fresh /health and a small
   closed loop of predictions meanwhile;
4. open-loop overload at MULTIPLE x capacity (aiohttp; the generator's ceiling is reported):
   goodput, shed (503) latency, fresh /health, errors, recovery;
5. kill -9 of one of two workers under a closed loop: time back to 90% of the throughput before.

Prints one markdown table; the machine's load average is printed first (the box may be shared).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

BENCH = Path(__file__).parent
BODY = b'{"length": 5.1, "width": 2.4}'
LUA = BENCH / "lua" / "predict_iris.lua"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")


@dataclass
class Server:
    name: str
    argv: list[str]
    env: dict[str, str]
    port: int
    probe_port: int | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        def raise_fd_limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (16384, 16384))

        self.proc = subprocess.Popen(
            ["taskset", "-c", "1", *self.argv],
            env={**os.environ, **self.env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=raise_fd_limit,
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                request = urllib.request.Request(self.url + "/predict", data=BODY, method="POST")
                request.add_header("content-type", "application/json")
                if urllib.request.urlopen(request, timeout=2).status == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not come up")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def workers(self) -> list[int]:
        assert self.proc is not None
        # taskset execs the server in place, so the supervisor is proc.pid; its workers are its children
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        return [int(c) for c in children if "resource_tracker" not in Path(f"/proc/{c}/cmdline").read_text()]


def make_servers(repo: Path, model_file: Path, workers: int) -> list[Server]:
    ferry_port, probe_port, peer_port = free_port(), free_port(), free_port()
    ferry = Server(
        "ferry",
        [sys.executable, "-m", "ferry", "serve", str(repo), "--port", str(ferry_port), "--grpc-port", "0",
         "--probe-port", str(probe_port), "--no-access-log", "--log-level", "warning", "--workers", str(workers)],
        {},
        ferry_port,
        probe_port,
    )  # fmt: skip
    peer = Server(
        "fastapi",
        [sys.executable, "-m", "uvicorn", "fastapi_iris:app", "--port", str(peer_port), "--loop", "uvloop",
         "--http", "httptools", "--no-access-log", "--log-level", "warning", "--workers", str(workers)],
        {"IRIS_MODEL": str(model_file), "PYTHONPATH": str(BENCH / "peers")},
        peer_port,
    )  # fmt: skip
    return [ferry, peer]


# -- probes on fresh connections -------------------------------------------------------------------------
@dataclass
class Probes:
    waits: list[float] = field(default_factory=list)
    failures: int = 0


def probe_loop(port: int, stop: threading.Event, out: Probes, period: float = 0.05) -> None:
    """GET /health on a new connection every ``period`` s, as kubelet does, until ``stop``."""
    while not stop.is_set():
        started = time.perf_counter()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                sock.settimeout(10)
                reply = sock.recv(65536)
                if not reply.startswith(b"HTTP/1.1 200"):
                    raise OSError(reply[:40])
            out.waits.append(time.perf_counter() - started)
        except OSError:
            out.failures += 1
        time.sleep(max(0.0, period - (time.perf_counter() - started)))


@contextlib.contextmanager
def probing(server: Server) -> Iterator[dict[str, Probes]]:
    stop, results, threads = threading.Event(), {}, []
    ports = {"main": server.port} | ({"probe": server.probe_port} if server.probe_port else {})
    for label, port in ports.items():
        results[label] = Probes()
        threads.append(threading.Thread(target=probe_loop, args=(port, stop, results[label]), daemon=True))
    for thread in threads:
        thread.start()
    try:
        yield results
    finally:
        stop.set()
        for thread in threads:
            thread.join(15)


def probe_cell(results: dict[str, Probes]) -> str:
    cells = []
    for label, probes in results.items():
        cells.append(f"{label}: {pct(probes.waits, 0.5):.1f} / {pct(probes.waits, 0.99):.1f}"
                     + (f" ({probes.failures} failed)" if probes.failures else ""))  # fmt: skip
    return "; ".join(cells)


# -- wrk -------------------------------------------------------------------------------------------------
def wrk(server: Server, connections: int, seconds: float) -> dict[str, float]:
    out = subprocess.run(
        ["taskset", "-c", "0", "wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s",
         "-s", str(LUA), server.url + "/predict"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}  # type: ignore[union-attr]
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    result["errors"] = sum(int(g) for g in errors.groups()) if errors else 0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result["non2xx"] = int(non2xx.group(1)) if non2xx else 0
    return result


def keepalive_row(server: Server, seconds: float) -> str:
    with probing(server) as probes:
        time.sleep(0.5)
        load = wrk(server, 1000, seconds)
    return (f"{load['rps']:.0f} req/s, {load['non2xx']:.0f} non-2xx, {load['errors']:.0f} socket errors "
            f"| {probe_cell(probes)}")  # fmt: skip


# -- slowloris -------------------------------------------------------------------------------------------
async def slowloris(server: Server, count: int, seconds: float) -> str:
    held: list[asyncio.StreamWriter] = []
    for _ in range(count):
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            held.append(writer)
    ok, failed = 0, 0
    loop = asyncio.get_running_loop()
    with probing(server) as probes:
        deadline = loop.time() + seconds
        async with aiohttp.ClientSession() as session:
            while loop.time() < deadline:
                for writer in held:  # one more byte each second keeps every head unfinished
                    if not writer.is_closing():
                        writer.write(b"a")
                try:
                    async with session.post(server.url + "/predict", data=BODY, timeout=aiohttp.ClientTimeout(5),
                                            headers={"content-type": "application/json"}) as response:  # fmt: skip
                        await response.read()
                        ok += response.status == 200
                        failed += response.status != 200
                except (TimeoutError, aiohttp.ClientError):
                    failed += 1
                await asyncio.sleep(0.2)
    still_open = 0
    for writer in held:
        still_open += not writer.is_closing() and not writer.transport.is_closing()
        writer.close()
    return f"{len(held)} held, {still_open} still open after {seconds:g} s | predict {ok} ok / {failed} failed | {probe_cell(probes)}"


# -- open-loop overload ----------------------------------------------------------------------------------
async def overload(server: Server, rate: float, seconds: float, baseline: float) -> dict[str, object]:
    latencies: dict[object, list[float]] = {}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(scheduled: float) -> None:
            try:
                async with session.post(server.url + "/predict", data=BODY, timeout=aiohttp.ClientTimeout(30),
                                        headers={"content-type": "application/json"}) as response:  # fmt: skip
                    await response.read()
                    key: object = response.status
            except Exception as exc:
                key = type(exc).__name__
            latencies.setdefault(key, []).append(time.perf_counter() - scheduled)

        tasks, start = [], time.perf_counter()
        with probing(server) as probes:
            # Open loop: request i is due at start + i / rate, whatever came back; a generator that falls
            # behind sends at once, and stops at the deadline (the offered rate it reached is reported).
            while (now := time.perf_counter()) - start < seconds:
                due = start + len(tasks) / rate
                if due > now:
                    await asyncio.sleep(due - now)
                elif len(tasks) % 64 == 0:
                    await asyncio.sleep(0)
                tasks.append(asyncio.create_task(one(max(due, now))))  # latency from the actual send
            sent_for = time.perf_counter() - start

            async def recovery() -> float | None:
                """From the end of the offered load: until 5 lone requests in a row are served at baseline speed."""
                ended, streak = time.perf_counter(), 0
                while time.perf_counter() - ended < 30:
                    started = time.perf_counter()
                    try:
                        async with session.post(server.url + "/predict", data=BODY, timeout=aiohttp.ClientTimeout(5),
                                                headers={"content-type": "application/json"}) as response:  # fmt: skip
                            await response.read()
                            good = response.status == 200 and time.perf_counter() - started < max(2 * baseline, 0.005)
                    except (aiohttp.ClientError, asyncio.TimeoutError):
                        good = False
                    streak = streak + 1 if good else 0
                    if streak >= 5:
                        return time.perf_counter() - ended
                    await asyncio.sleep(0.01)
                return None

            recovered, *_ = await asyncio.gather(recovery(), *tasks)
    return {"latencies": latencies, "probes": probes, "offered": len(tasks) / sent_for, "recovery": recovered,
            "seconds": sent_for}  # fmt: skip


async def baseline_latency(server: Server) -> float:
    times = []
    async with aiohttp.ClientSession() as session:
        for _ in range(50):
            started = time.perf_counter()
            async with session.post(server.url + "/predict", data=BODY,
                                    headers={"content-type": "application/json"}) as response:  # fmt: skip
                await response.read()
            times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def overload_row(server: Server, capacity: float, multiple: float, seconds: float) -> str:
    baseline = asyncio.run(baseline_latency(server))
    result = asyncio.run(overload(server, capacity * multiple, seconds, baseline))
    lat: dict[object, list[float]] = result["latencies"]  # type: ignore[assignment]
    goodput = len(lat.get(200, [])) / float(result["seconds"])  # type: ignore[arg-type]
    errors = sum(len(v) for k, v in lat.items() if not isinstance(k, int))
    shed = lat.get(503, []) + lat.get(429, [])
    recovery = result["recovery"]
    return (f"offered {result['offered']:.0f} req/s ({result['offered'] / capacity:.1f}x) "  # type: ignore[operator]
            f"| {goodput:.0f} req/s = {100 * goodput / capacity:.0f}% | {len(shed)} shed, p99 {pct(shed, 0.99):.1f} ms "
            f"| 200 p99 {pct(lat.get(200, []), 0.99):.0f} ms | {errors} errors "
            f"| {probe_cell(result['probes'])} "  # type: ignore[arg-type]
            f"| {'%.2f s' % recovery if recovery is not None else '> 30 s'}")  # fmt: skip


# -- kill -9 of a worker ---------------------------------------------------------------------------------
async def closed_loop_series(server: Server, clients: int, seconds: float, kill_at: float) -> tuple[list[int], int]:
    buckets = [0] * int(seconds * 10)
    errors = [0]
    start = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as session:

        async def client() -> None:
            while time.perf_counter() - start < seconds:
                try:
                    async with session.post(server.url + "/predict", data=BODY, timeout=aiohttp.ClientTimeout(5),
                                            headers={"content-type": "application/json"}) as response:  # fmt: skip
                        await response.read()
                        if response.status == 200:
                            buckets[min(len(buckets) - 1, int((time.perf_counter() - start) * 10))] += 1
                except (TimeoutError, aiohttp.ClientError):
                    errors[0] += 1
                    await asyncio.sleep(0.01)

        async def killer() -> None:
            await asyncio.sleep(kill_at)
            os.kill(server.workers()[0], signal.SIGKILL)

        await asyncio.gather(killer(), *(client() for _ in range(clients)))
    return buckets, errors[0]


def kill_row(server: Server, seconds: float = 20.0, kill_at: float = 5.0) -> str:
    buckets, errors = asyncio.run(closed_loop_series(server, 64, seconds, kill_at))
    before = sum(buckets[10 : int(kill_at * 10)]) / (kill_at - 1)  # req/s, skipping the first second
    back = None
    for i in range(int(kill_at * 10), len(buckets) - 10):
        if sum(buckets[i : i + 10]) >= 0.9 * before:
            back = i / 10 - kill_at
            break
    return (f"{before:.0f} req/s before | back to 90% after {'%.1f s' % back if back is not None else 'never'} "
            f"| {errors} errors")  # fmt: skip


# -- the run -------------------------------------------------------------------------------------------
def prepare(tmp: Path) -> tuple[Path, Path]:
    import joblib
    import skops.io

    from ferry.examples import build_examples

    repo = tmp / "repo"
    build_examples(repo, ["iris"])
    artifact = repo / "iris" / "1" / "model.skops"
    model = skops.io.load(artifact, trusted=skops.io.get_untrusted_types(file=artifact))
    joblib.dump(model, tmp / "iris.joblib")
    return repo, tmp / "iris.joblib"


def run(seconds: float, multiple: float) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(16384, hard), hard))
    print(
        f"load average before: {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    rows: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        repo, model_file = prepare(Path(tmp))
        for workers in (1, 2):
            for server in make_servers(repo, model_file, workers):
                server.start()
                cells = rows.setdefault(server.name, {})
                try:
                    if workers == 1:
                        capacity = wrk(server, 64, seconds)["rps"]
                        cells["capacity"] = f"{capacity:.0f} req/s"
                        cells["keepalive"] = keepalive_row(server, seconds)
                        with probing(server) as idle:  # the floor: this box's scheduling noise, no load
                            time.sleep(seconds)
                        cells["idle"] = probe_cell(idle)
                        cells["slowloris"] = asyncio.run(slowloris(server, 2000, max(seconds, 15.0)))
                        cells["overload"] = overload_row(server, capacity, multiple, seconds)
                    else:
                        cells["kill"] = kill_row(server)
                finally:
                    server.stop()
                for key, cell in cells.items():  # as they come, so a failed run still leaves its figures
                    print(f"{server.name} {key}: {cell}", file=sys.stderr)
                print(f"{server.name} ({workers} worker{'s' if workers > 1 else ''}) done; load {os.getloadavg()[0]:.2f}",
                      file=sys.stderr)  # fmt: skip
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    titles = {
        "capacity": "capacity (wrk, 64 keep-alive connections)",
        "idle": "idle server: fresh /health p50 / p99 ms (the box's floor)",
        "keepalive": "1,000 keep-alive connections on predict | fresh /health p50 / p99 ms",
        "slowloris": "2,000 slowloris connections | predict meanwhile | fresh /health p50 / p99 ms",
        "overload": f"open loop at {multiple:g}x capacity | goodput | shed | 200 p99 | errors | fresh /health p50 / p99 ms | recovery",
        "kill": "kill -9 of one of 2 workers (64 clients) | recovery | errors",
    }
    print("| test | server | result |\n|---|---|---|")
    for key, title in titles.items():
        for name, cells in rows.items():
            print(f"| {title} | {name} | {cells.get(key, 'n/a')} |")
