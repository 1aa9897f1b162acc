"""What start-up does and does not do: a served process loads no gRPC it will not serve, and the app
freezes start-up's objects out of the collector's reach, which is on once the server has started.
(How fast it starts is measured in bench/ready.py.)
"""

from __future__ import annotations

import asyncio
import gc
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.conftest import free_port

from ferry.server.worker import create_app_from_env


def test_a_server_without_grpc_maps_no_grpc_library(serve: Any, example_repo: Path) -> None:
    """gRPC (a large C extension, slow to import) is loaded only when its port is on."""
    server = serve(str(example_repo), "--grpc-port", "0")
    assert httpx.post(server.url + "/models/iris/predict", json={"length": 5.1, "width": 2.4}).status_code == 200
    mapped = Path(f"/proc/{server.proc.pid}/maps").read_text()
    assert "/grpc/" not in mapped and "cygrpc" not in mapped


def test_a_server_with_grpc_maps_protobuf_but_no_grpcio(serve: Any, example_repo: Path) -> None:
    """gRPC is framed by Ferry (ferry.grpc.http2): with its port on, protobuf's extension is loaded, grpcio never."""
    server = serve(str(example_repo), "--grpc-port", str(free_port()))
    mapped = Path(f"/proc/{server.proc.pid}/maps").read_text()
    assert "_upb" in mapped and "cygrpc" not in mapped


def test_the_app_factory_freezes_start_ups_objects_and_the_started_server_turns_the_collector_on(
    example_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ferry serve`` imports with the collector off; the factory every worker runs freezes what start-up
    made (so no collection walks it again, and forked workers keep its pages shared). The collector stays
    off until the server has started (gRPC imported, models loading), then is turned on."""
    monkeypatch.setenv("FERRY_REPO", str(example_repo))
    monkeypatch.setenv("FERRY_CONSOLE", "0")
    monkeypatch.setenv("FERRY_GRPC_PORT", "0")
    monkeypatch.setenv("FERRY_PROBE_PORT", "0")
    sigterm = signal.getsignal(signal.SIGTERM)
    gc.disable()  # as ferry.cli.entry leaves it
    try:
        app = create_app_from_env()
        assert gc.get_freeze_count() > 10_000  # the imported server, not a handful of objects
        assert not gc.isenabled()
        asyncio.run(_started(app))
    finally:
        gc.unfreeze()
        gc.enable()
        signal.signal(signal.SIGTERM, sigterm)  # (the lifespan installs the drain handler)


async def _started(app: Any) -> None:
    starlette = app.app
    async with starlette.router.lifespan_context(starlette):
        assert gc.isenabled()
