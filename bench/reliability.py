"""Overload figures for the README: a model driven at several times its capacity (stdlib + aiohttp + ferry).

    python bench/reliability.py [--multiple 10] [--duration 10]
    python bench/reliability.py connections [--multiple 10] [--duration 10]   (see bench/connections.py)

Builds a deliberately slow model (50 ms per call, batching off: 20 req/s capacity), serves it with
``ferry serve --max-queue 8`` on a free loopback port, sends an open-loop load of MULTIPLE x capacity,
probes /health every 100 ms meanwhile, then measures a lone request after the burst. Prints a
markdown table: statuses, rejection latency, health latency under load, recovery latency, failures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from connections import free_port, pct  # one copy of the port and percentile helpers, beside this file

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
    parser.add_argument("suite", nargs="?", choices=["overload", "connections"], default="overload")
    parser.add_argument("--multiple", type=float, default=10.0)
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args()
    if args.suite == "connections":  # Ferry and a plain FastAPI app side by side (bench/connections.py)
        sys.path.insert(0, str(Path(__file__).parent))
        from connections import run

        run(args.duration, args.multiple)
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


if __name__ == "__main__":
    main()
