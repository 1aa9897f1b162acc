"""Overload figures for docs/reliability.md: a model driven at several times its capacity (stdlib + aiohttp + ferry).

    python bench/reliability.py [--multiple 10] [--duration 10]
    python bench/reliability.py connections [--multiple 10] [--duration 10]   (see bench/connections.py)
    python bench/reliability.py slow [--duration 15]   (slow clients: see ``slow_suite``)

Builds a deliberately slow model (50 ms per call, batching off: 20 req/s capacity), serves it with
``ferry serve --max-queue 8`` on a free loopback port, sends an open-loop load of MULTIPLE x capacity,
probes /health every 100 ms meanwhile, then measures a lone request after the burst. Prints a
markdown table: statuses, rejection latency, health latency under load, recovery latency, failures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiohttp
from connections import Server, free_port, pct  # one copy of the port and percentile helpers, beside this file

SLEEPY = """
import time
class Sleepy:
    def load(self): pass
    def predict(self, batch):
        time.sleep(0.05)
        return batch
"""


async def drive(url: str, rate: float, duration: float) -> dict[str, object]:
    latencies: dict[int | str, list[float]] = {}
    health: list[float] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one(scheduled: float) -> None:
            try:
                async with session.post(
                    url + "/models/sleepy/predict", json=[1.0], timeout=aiohttp.ClientTimeout(total=30)
                ) as response:
                    await response.read()
                    key: int | str = response.status
            except Exception as exc:  # counted as a failure
                key = type(exc).__name__
            latencies.setdefault(key, []).append(time.perf_counter() - scheduled)

        async def probe() -> None:
            while True:
                started = time.perf_counter()
                async with session.get(url + "/health") as response:
                    await response.read()
                health.append(time.perf_counter() - started)
                await asyncio.sleep(0.1)

        prober = asyncio.create_task(probe())
        tasks, start = [], time.perf_counter()
        for i in range(int(rate * duration)):
            scheduled = start + i / rate
            await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
            tasks.append(asyncio.create_task(one(scheduled)))
        await asyncio.gather(*tasks)
        prober.cancel()
        await asyncio.sleep(0.2)
        started = time.perf_counter()
        async with session.post(url + "/models/sleepy/predict", json=[1.0]) as response:
            await response.read()
        after = time.perf_counter() - started
    return {"latencies": latencies, "health": health, "after": after}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "suite", nargs="?", choices=["overload", "connections", "slow", "newclient"], default="overload"
    )
    parser.add_argument("--multiple", type=float, default=10.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=1000, help="newclient: keep-alive connections under load")
    args = parser.parse_args()
    if args.suite == "newclient":
        new_client_suite(args.clients, args.duration)
        return
    if args.suite == "connections":  # Ferry and a plain FastAPI app side by side (bench/connections.py)
        sys.path.insert(0, str(Path(__file__).parent))
        from connections import run

        run(args.duration, args.multiple)
        return
    if args.suite == "slow":
        slow_suite(max(args.duration, 15.0))
        return
    import ferry

    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "sleepy.py"
        source.write_text(SLEEPY)
        sys.path.insert(0, tmp)
        import sleepy  # type: ignore[import-not-found]

        repo = Path(tmp) / "repo"
        ferry.build(
            sleepy.Sleepy,
            "sleepy",
            repo,
            input_schema={"kind": "tensor", "tensors": [{"name": "x"}]},
            sample_input=[1.0],
        )
        port = free_port()
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ferry",
                "serve",
                str(repo),
                "--port",
                str(port),
                "--grpc-port",
                "0",
                "--probe-port",
                "0",
                "--max-queue",
                "8",
                "--log-level",
                "warning",
                "--trust-code",  # the Sleepy class above is this script's own code
            ],
            env={**os.environ},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            for _ in range(200):
                try:
                    import urllib.request

                    if urllib.request.urlopen(url + "/ready").status == 200:
                        break
                except OSError:
                    time.sleep(0.05)
            result = asyncio.run(drive(url, 20.0 * args.multiple, args.duration))
        finally:
            server.terminate()
            server.wait(30)
    lat: dict[int | str, list[float]] = result["latencies"]  # type: ignore[assignment]
    total = sum(len(v) for v in lat.values())
    failed = sum(len(v) for k, v in lat.items() if k not in (200, 503, 504))
    print(
        "| load | requests | 200 | 503 (shed) | 504 | failed | 503 p50 / p99 ms | 200 p99 ms "
        "| /health p50 / max ms | lone request after, ms |"
    )
    print("|---|---:|---:|---:|---:|---:|---|---:|---|---:|")
    health: list[float] = result["health"]  # type: ignore[assignment]
    print(
        f"| {args.multiple:g}x capacity, {args.duration:g} s | {total} | {len(lat.get(200, []))} "
        f"| {len(lat.get(503, []))} | {len(lat.get(504, []))} | {failed} "
        f"| {pct(lat.get(503, []), 0.5):.1f} / {pct(lat.get(503, []), 0.99):.1f} | {pct(lat.get(200, []), 0.99):.0f} "
        f"| {pct(health, 0.5):.1f} / {max(health) * 1000:.1f} | {float(result['after']) * 1000:.0f} |"
    )  # type: ignore[arg-type]


# -- slow clients: Ferry and FastAPI + uvicorn side by side (issue 22, items 4, 6 and 7) --------------------
SLOW_HEAD = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"


async def idle_sockets(port: int, count: int, seconds: float) -> str:
    """``count`` connections that send nothing, then a fresh GET /health every 50 ms, each given kubelet's 1 s."""
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(count)]
    waits, failed = [], 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1.0)
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            reply = await asyncio.wait_for(reader.read(65536), max(0.01, 1.0 - (time.perf_counter() - started)))
            writer.close()
            if not reply.startswith(b"HTTP/1.1 200"):
                raise OSError(reply[:40])
            waits.append(time.perf_counter() - started)
        except (OSError, TimeoutError):
            failed += 1
        await asyncio.sleep(max(0.0, 0.05 - (time.perf_counter() - started)))
    for _, writer in held:
        writer.close()
    answered = f"{len(waits)} of {len(waits) + failed} probes answered in 1 s"
    return f"{answered}; p50 / p99 {pct(waits, 0.5):.1f} / {pct(waits, 0.99):.1f} ms"


async def slow_bodies(url: str, port: int, count: int, seconds: float) -> str:
    """``count`` POSTs whose 1,000-byte body comes a byte a second; meanwhile a fresh predict every 0.1 s."""
    from connections import BODY

    held = []
    for _ in range(count):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            break
        writer.write(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
        )
        held.append(writer)
    statuses: dict[object, int] = {}
    waits: list[float] = []
    deadline = time.perf_counter() + seconds
    tick = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        while time.perf_counter() < deadline:
            if time.perf_counter() - tick >= 1.0:
                tick = time.perf_counter()
                for writer in held:
                    if not writer.is_closing():
                        writer.write(b" ")
            started = time.perf_counter()
            try:
                async with session.post(url + "/predict", data=BODY, timeout=aiohttp.ClientTimeout(total=5),
                                        headers={"content-type": "application/json"}) as response:  # fmt: skip
                    await response.read()
                    key: object = response.status
            except (TimeoutError, aiohttp.ClientError) as exc:
                key = type(exc).__name__
            statuses[key] = statuses.get(key, 0) + 1
            if key == 200:
                waits.append(time.perf_counter() - started)
            await asyncio.sleep(0.1)
    still_open = sum(not w.is_closing() and not w.transport.is_closing() for w in held)
    for writer in held:
        writer.close()
    summary = ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items(), key=str))
    return (f"{len(held)} held, {still_open} still open after {seconds:g} s | predict {summary}; "
            f"200 p50 / p99 {pct(waits, 0.5):.1f} / {pct(waits, 0.99):.1f} ms")  # fmt: skip


def fresh_predicts(port: int, stop: threading.Event, waits: list[float], statuses: dict[object, int]) -> None:
    """POST /predict on a new connection every 0.1 s until ``stop``; each given 10 s, as a patient client."""
    from connections import BODY

    request = (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
               b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY))  # fmt: skip
    while not stop.is_set():
        started = time.perf_counter()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(request)
                reply = sock.recv(65536)
            key: object = int(reply[9:12]) if reply.startswith(b"HTTP/1.1 ") else "closed"
        except OSError as exc:
            key = type(exc).__name__
        statuses[key] = statuses.get(key, 0) + 1
        waits.append(time.perf_counter() - started)
        time.sleep(max(0.0, 0.1 - (time.perf_counter() - started)))


def new_client(server: Server, clients: int, seconds: float) -> str:
    """``clients`` keep-alive connections sending predict back to back (wrk); a fresh predict every 0.1 s."""
    from connections import wrk

    stop, waits, statuses = threading.Event(), [], {}  # type: ignore[var-annotated]
    prober = threading.Thread(target=fresh_predicts, args=(server.port, stop, waits, statuses), daemon=True)
    loaded = {}
    loader = threading.Thread(target=lambda: loaded.update(wrk(server, clients, seconds)), daemon=True)
    loader.start()
    time.sleep(1.0)  # every connection open and busy
    prober.start()
    loader.join()
    stop.set()
    prober.join(15)
    summary = ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items(), key=str))
    return (f"wrk {loaded.get('rps', 0):.0f} req/s, {loaded.get('non2xx', 0):.0f} non-2xx, "
            f"{loaded.get('errors', 0):.0f} socket errors | fresh predicts {summary}; p50 / p99 / max "
            f"{pct(waits, 0.5):.0f} / {pct(waits, 0.99):.0f} / {pct(waits, 1.0):.0f} ms")  # fmt: skip


def slow_suite(seconds: float) -> None:
    """64 idle sockets on the probe listener, 2,100 slow bodies, 1,000 half-sent heads at ``ferry gateway``.

    FastAPI + uvicorn has no probe port and no gateway: its idle sockets and heads go to its one port, the
    reference a plain uvicorn server sets for the same clients.
    """
    import resource

    import yaml
    from connections import Server, make_servers, prepare, slowloris

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(16384, hard), hard))
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"load average before: {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs, {when}")
    rows: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        repo, model_file = prepare(Path(tmp))
        for server in make_servers(repo, model_file, 1):
            server.start()
            cells = rows.setdefault(server.name, {})
            try:
                cells["idle"] = asyncio.run(idle_sockets(server.probe_port or server.port, 64, seconds))
                cells["bodies"] = asyncio.run(slow_bodies(server.url, server.port, 2100, seconds))
                if server.name == "ferry":
                    routes = Path(tmp) / "routes.yaml"
                    routes.write_text(yaml.safe_dump({"services": {"iris": {"url": server.url}},
                                                      "default": {"to": {"model": "iris"}}}))  # fmt: skip
                    port = free_port()
                    argv = [sys.executable, "-m", "ferry", "gateway", str(routes), "--port", str(port)]
                    gateway = Server("ferry gateway", argv, {}, port)
                    gateway.start()
                    try:
                        cells["gateway"] = asyncio.run(slowloris(gateway, 1000, seconds))
                    finally:
                        gateway.stop()
                else:
                    cells["gateway"] = asyncio.run(slowloris(server, 1000, seconds))
            finally:
                server.stop()
            for key, cell in cells.items():
                print(f"{server.name} {key}: {cell}", file=sys.stderr)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    titles = {
        "idle": "64 idle sockets on the probe port (FastAPI: its one port) | fresh /health, 1 s each",
        "bodies": "2,100 bodies at a byte a second | a fresh predict every 0.1 s",
        "gateway": "1,000 half-sent heads at ferry gateway (FastAPI: at uvicorn) | predict meanwhile | fresh /health",
    }
    print("| test | server | result |\n|---|---|---|")
    for key, title in titles.items():
        for name, cells in rows.items():
            print(f"| {title} | {name} | {cells.get(key, 'n/a')} |")


def new_client_suite(clients: int, seconds: float) -> None:
    """Only the new-client case (also a row of ``slow``): Ferry and FastAPI + uvicorn in one run."""
    import resource

    from connections import make_servers, prepare

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(16384, hard), hard))
    print(f"load average before: {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        repo, model_file = prepare(Path(tmp))
        for server in make_servers(repo, model_file, 1):
            server.start()
            try:
                print(f"{server.name}: {new_client(server, clients, seconds)}", flush=True)
            finally:
                server.stop()
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
