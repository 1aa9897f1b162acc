"""The load generator: an open loop on a fixed arrival schedule, or a closed loop of C users, over aiohttp.

Open-loop latency is taken from each request's *scheduled* send time, so a stalled server shows up as
latency (no coordinated omission) and a slow generator shows up as lag in the summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp

from ferry.loadtest.results import Recorder, interval_p99_ms
from ferry.loadtest.schedule import Schedule, parse_duration
from ferry.settings import LoadTestSettings

if TYPE_CHECKING:
    from ferry.loadtest.grpc import GrpcTransport

Tick = Callable[[dict[str, Any]], None]
HEADERS = {"content-type": "application/json"}
TICK_S = 0.5


@dataclass(frozen=True)
class LoadSpec:
    """One process's share of a run: where, what, and either a schedule (open) or users (closed)."""

    url: str
    bodies: list[bytes]
    schedule: Schedule | None = None
    concurrency: int = 0
    duration: float = parse_duration(LoadTestSettings.duration)
    timeout: float = parse_duration(LoadTestSettings.timeout)
    connections: int = LoadTestSettings.connections
    grpc_target: str | None = None  # host:port: send ModelInfer over gRPC instead of HTTP POSTs to ``url``
    method: str = "POST"  # ``--route``: any method; an empty body is sent as none


def run_load(spec: LoadSpec, on_tick: Tick | None = None) -> Recorder:
    """Run one load test in this process on a fresh event loop (uvloop when installed)."""
    try:
        import uvloop

        return uvloop.run(_run(spec, on_tick))
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        return asyncio.run(_run(spec, on_tick))


async def _run(spec: LoadSpec, on_tick: Tick | None) -> Recorder:
    recorder = Recorder()
    connector = aiohttp.TCPConnector(limit=spec.connections, limit_per_host=spec.connections, ttl_dns_cache=300)
    timeout = aiohttp.ClientTimeout(total=spec.timeout)
    session = aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        headers=HEADERS,
        cookie_jar=aiohttp.DummyCookieJar(),  # no per-request cookie work
        auto_decompress=False,
        skip_auto_headers=("User-Agent",),
    )
    grpc = None
    if spec.grpc_target is not None:
        from ferry.loadtest.grpc import GrpcTransport

        grpc = GrpcTransport(spec.grpc_target, spec.timeout)
    async with session:
        await _warm_up(session, spec, grpc)
        client = _Client(session, spec, recorder, time.perf_counter() + 0.05, grpc)
        ticker = asyncio.create_task(_ticker(client, on_tick))
        try:
            if spec.schedule is not None:
                await client.open_loop(spec.schedule)
            else:
                await client.closed_loop(spec.concurrency, spec.duration)
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        recorder.elapsed_s = time.perf_counter() - client.start
    if grpc is not None:
        await grpc.close()
    if on_tick is not None:
        on_tick(client.snapshot())
    return recorder


class _Client:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        spec: LoadSpec,
        recorder: Recorder,
        start: float,
        grpc: GrpcTransport | None = None,
    ) -> None:
        self.session = session
        self.grpc = grpc
        self.spec = spec
        self.recorder = recorder
        self.start = start
        self.bodies = itertools.cycle(spec.bodies)
        self.in_flight = 0
        self._last = (start, 0)

    async def open_loop(self, schedule: Schedule) -> None:
        pending: set[asyncio.Task[None]] = set()
        burst = 0
        for offset in schedule.times():
            when = self.start + offset
            now = time.perf_counter()
            if when > now:
                await asyncio.sleep(when - now)
                now = time.perf_counter()
                burst = 0
            elif burst >= 64:  # behind schedule: still let responses in, or lag would feed on itself
                await asyncio.sleep(0)
                burst = 0
            burst += 1
            self.recorder.note_send(now - when)
            task = asyncio.create_task(self.send(when))
            pending.add(task)
            task.add_done_callback(pending.discard)
        self.recorder.send_window_s = max(time.perf_counter() - self.start, schedule.duration)
        # Drain: every request sent gets its answer or its timeout.
        if pending:
            await asyncio.gather(*pending)

    async def closed_loop(self, users: int, duration: float) -> None:
        end = self.start + duration
        await asyncio.sleep(max(0.0, self.start - time.perf_counter()))

        async def user() -> None:
            while time.perf_counter() < end:
                self.recorder.note_send(0.0)
                await self.send(time.perf_counter())

        await asyncio.gather(*(user() for _ in range(users)))
        self.recorder.send_window_s = time.perf_counter() - self.start

    async def send(self, scheduled: float) -> None:
        self.in_flight += 1
        status: int | None = None
        error: str | None = None
        if self.grpc is not None:
            try:
                status, error = await self.grpc.send(next(self.bodies))
            finally:
                self.in_flight -= 1
            done = time.perf_counter()
            self.recorder.record(status, error, done - scheduled, done - self.start)
            return
        try:
            request = self.session.request(self.spec.method, self.spec.url, data=next(self.bodies) or None)
            async with request as response:
                body = await response.read()
                status = response.status
                if not 200 <= status < 300:
                    error = _http_error_kind(status, body)
        except TimeoutError:
            error = "timeout"
        except aiohttp.ClientConnectorError:
            error = "connection refused"
        except aiohttp.ServerDisconnectedError:
            error = "server disconnected"
        except aiohttp.ClientError as exc:
            error = type(exc).__name__
        finally:
            self.in_flight -= 1
        done = time.perf_counter()
        self.recorder.record(status, error, done - scheduled, done - self.start)

    def snapshot(self) -> dict[str, Any]:
        now = time.perf_counter()
        r = self.recorder
        last_time, last_count = self._last
        self._last = (now, r.completed)
        p99 = interval_p99_ms(r.interval)
        r.interval.clear()
        return {
            "elapsed": max(0.0, now - self.start),
            "sent": r.sent,
            "completed": r.completed,
            "failed": r.failed,
            "in_flight": self.in_flight,
            "rate": (r.completed - last_count) / max(now - last_time, 1e-9),
            "p99_ms": p99,
            "max_lag_ms": r.max_lag_s * 1000,
        }


async def _warm_up(session: aiohttp.ClientSession, spec: LoadSpec, grpc: GrpcTransport | None) -> None:
    """One unmeasured request first: lazy imports and the first connection are not the server's latency."""
    if grpc is not None:
        await grpc.send(spec.bodies[0])
        return
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        async with session.request(spec.method, spec.url, data=spec.bodies[0] or None) as response:
            await response.read()


async def _ticker(client: _Client, on_tick: Tick | None) -> None:
    while True:
        await asyncio.sleep(TICK_S)
        snapshot = client.snapshot()
        if on_tick is not None:
            on_tick(snapshot)


def _http_error_kind(status: int, body: bytes) -> str:
    """``http 503`` plus the service's stable error code when it sends one."""
    try:
        code = json.loads(body).get("code")
    except (ValueError, AttributeError):
        code = None
    return f"http {status} {code}" if isinstance(code, str) else f"http {status}"
