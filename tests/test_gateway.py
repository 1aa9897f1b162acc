"""``ferry gateway``: retries only where safe, the circuit breaker, a down upstream; and two real servers behind it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
import uvicorn
import yaml
from aiohttp import web
from tests.conftest import free_port

from ferry.routing.spec import RoutesFile, parse_routes
from ferry.server.gateway import Gateway, GatewaySettings, gateway_config


async def _start(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


def run_with_gateway(
    upstream: Callable[[web.Request], Awaitable[web.Response]] | None,
    service: dict[str, Any],
    check: Callable[[aiohttp.ClientSession, str], Awaitable[None]],
) -> None:
    """An in-process upstream (None: nothing listening) behind an in-process gateway."""

    async def main() -> None:
        runners = []
        if upstream is not None:
            app = web.Application()
            app.router.add_get("/health", _healthy)
            app.router.add_route("*", "/{tail:.*}", upstream)
            runner, url = await _start(app)
            runners.append(runner)
        else:
            url = f"http://127.0.0.1:{free_port()}"
        routes = parse_routes({"services": {"m": {"url": url, **service}}, "default": {"to": {"model": "m"}}})
        try:
            async with in_process_gateway(routes) as gateway_url, aiohttp.ClientSession() as session:
                await check(session, gateway_url)
        finally:
            for runner in runners:
                await runner.cleanup()

    asyncio.run(main())


@contextlib.asynccontextmanager
async def in_process_gateway(routes: RoutesFile) -> AsyncIterator[str]:
    """A ``Gateway`` served as ``ferry gateway`` serves it (uvicorn, Ferry's connection layer) in this loop."""
    settings = GatewaySettings(port=free_port(), health_interval=0.1)
    server = uvicorn.Server(gateway_config(Gateway(routes, settings), settings, log_config=None))
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "the gateway did not start"
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{settings.port}"
    finally:
        server.should_exit = True
        await task


async def _healthy(request: web.Request) -> web.Response:
    return web.json_response({"health": "ok"})


def test_retries_a_503_with_retry_after_then_succeeds() -> None:
    calls: list[str] = []

    async def upstream(request: web.Request) -> web.Response:
        calls.append(await request.text())
        if len(calls) < 3:
            return web.json_response({"error": "busy"}, status=503, headers={"Retry-After": "0"})
        return web.json_response({"prediction": 1})

    async def check(session: aiohttp.ClientSession, url: str) -> None:
        async with session.post(url + "/predict", json={"x": 1}) as response:
            assert response.status == 200 and await response.json() == {"prediction": 1}
        assert calls == ['{"x": 1}'] * 3  # the same body each time
        async with session.get(url + "/metrics") as response:
            assert 'ferry_gateway_retries_total{upstream="m"} 2.0' in await response.text()

    run_with_gateway(upstream, {"retries": 3}, check)


def test_a_503_without_retry_after_and_a_500_are_not_retried() -> None:
    calls: list[int] = []

    async def upstream(request: web.Request) -> web.Response:
        calls.append(1)
        return web.json_response({"error": "no"}, status=503 if len(calls) == 1 else 500)

    async def check(session: aiohttp.ClientSession, url: str) -> None:
        async with session.post(url + "/predict", json={}) as response:
            assert response.status == 503
        async with session.post(url + "/predict", json={}) as response:
            assert response.status == 500
        assert len(calls) == 2

    run_with_gateway(upstream, {"retries": 3}, check)


def test_a_down_upstream_is_a_quick_502_then_the_breaker_opens_with_retry_after() -> None:
    async def check(session: aiohttp.ClientSession, url: str) -> None:
        started = time.perf_counter()
        for _ in range(2):
            async with session.post(url + "/predict", json={}) as response:
                assert response.status == 502
                body = await response.json()
                assert body["code"] == "upstream_unreachable" and "upstream 'm' at http://127.0.0.1:" in body["error"]
        assert time.perf_counter() - started < 3.0
        async with session.post(url + "/predict", json={}) as response:
            assert response.status == 503
            assert (await response.json())["code"] == "circuit_open"
            assert int(response.headers["Retry-After"]) >= 1
        await asyncio.sleep(0.3)
        async with session.get(url + "/ready") as response:
            assert response.status == 503 and await response.json() == {"ready": False, "upstreams": {"m": False}}
        async with session.get(url + "/health") as response:
            assert await response.json() == {"health": "ok"}

    run_with_gateway(None, {"retries": 1, "breaker_failures": 2, "breaker_reset_s": 30}, check)


def test_the_breaker_lets_a_trial_through_after_the_reset_and_closes_on_success() -> None:
    healthy = [False]

    async def upstream(request: web.Request) -> web.Response:
        return web.json_response({"prediction": 1}, status=200 if healthy[0] else 500)

    async def check(session: aiohttp.ClientSession, url: str) -> None:
        for _ in range(2):
            async with session.post(url + "/predict", json={}) as response:
                assert response.status == 500
        async with session.post(url + "/predict", json={}) as response:
            assert response.status == 503  # open
        healthy[0] = True
        await asyncio.sleep(0.35)
        async with session.post(url + "/predict", json={}) as response:
            assert response.status == 200  # the trial call closes it
        async with session.post(url + "/predict", json={}) as response:
            assert response.status == 200

    run_with_gateway(upstream, {"breaker_failures": 2, "breaker_reset_s": 0.3}, check)


def test_a_slow_upstream_is_a_504_at_its_timeout() -> None:
    async def upstream(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.json_response({})

    async def check(session: aiohttp.ClientSession, url: str) -> None:
        started = time.perf_counter()
        async with session.post(url + "/predict", json={}) as response:
            assert response.status == 504 and (await response.json())["code"] == "upstream_timeout"
        assert time.perf_counter() - started < 2.0

    run_with_gateway(upstream, {"timeout_s": 0.3}, check)


@pytest.fixture
def two_servers(image_repo: Path, tmp_path: Path, serve: Any) -> dict[str, Any]:
    servers = {}
    for name in ("general", "plants"):
        shutil.copytree(image_repo / name, tmp_path / name / name)
        servers[name] = serve(str(tmp_path / name), "--grpc-port", "0")
    return servers


def test_gateway_routes_two_real_servers_by_header_and_shadows_with_agreement(two_servers: Any, tmp_path: Path) -> None:
    routes = {
        "name": "classifier",
        "services": {name: {"url": s.url, "timeout_s": 5, "breaker_failures": 50} for name, s in two_servers.items()},
        "rules": [
            {"name": "mountain", "match": {"headers": {"target": "mountain"}}, "to": {"model": "plants"}},
            {
                "name": "compare",
                "match": {"query": {"compare": "1"}},
                "to": {"model": "general"},
                "shadow": {"model": "plants"},
            },
        ],
        "default": {"to": {"model": "general"}},
    }
    path = tmp_path / "routes.yaml"
    path.write_text(yaml.safe_dump(routes))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "gateway.log").open("wb")
    gateway = subprocess.Popen(
        [sys.executable, "-m", "ferry", "gateway", str(path), "--port", str(port), "--health-interval", "0.2"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=os.environ,
    )
    try:
        _wait(url + "/ready")
        assert httpx.get(url + "/label", headers={"target": "mountain"}).json() == ["flower", "building"]
        assert httpx.get(url + "/label").json() == ["circle", "square", "triangle", "stripes"]
        assert httpx.get(url + "/predict/test", headers={"target": "mountain"}).json() == {"prediction": "flower"}
        answer = httpx.get(url + "/predict/test", params={"compare": "1"})
        assert answer.json() == {"prediction": "circle"} and answer.headers["x-ferry-target"] == "general"
        metrics = ""
        for _ in range(50):
            metrics = httpx.get(url + "/metrics").text
            if 'ferry_shadow_comparisons_total{outcome="disagree",rule="compare"} 1.0' in metrics:
                break
            time.sleep(0.1)
        assert 'ferry_shadow_comparisons_total{outcome="disagree",rule="compare"} 1.0' in metrics
        assert 'ferry_route_latency_seconds_count{role="shadow",rule="compare",target="plants"} 1.0' in metrics

        two_servers["plants"].stop()
        started = time.perf_counter()
        down = httpx.get(url + "/label", headers={"target": "mountain"}, timeout=10)
        assert down.status_code == 502 and down.json()["code"] == "upstream_unreachable"
        assert time.perf_counter() - started < 3.0
        assert httpx.get(url + "/label").status_code == 200  # the other model is untouched
        time.sleep(0.5)
        ready = httpx.get(url + "/ready")
        assert ready.status_code == 503 and ready.json()["upstreams"] == {"general": True, "plants": False}
    finally:
        gateway.terminate()
        gateway.wait(10)
        log.close()


def test_gateway_refuses_a_model_without_a_service(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(yaml.safe_dump({"default": {"to": {"model": "nowhere"}}}))
    result = subprocess.run(
        [sys.executable, "-m", "ferry", "gateway", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1 and "no service declared for model 'nowhere'" in " ".join(result.stderr.split())


def _wait(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} not ready")
