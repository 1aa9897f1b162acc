"""``--workers N`` forks its workers from a parent that has imported the server (shared, copy-on-write pages)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_workers_are_forked_not_spawned(serve: Any, example_repo: Path) -> None:
    server = serve(str(example_repo), "--workers", "2", "--grpc-port", "0")
    deadline = time.monotonic() + 30
    while True:
        workers = [p for p in _children(server.proc.pid) if b"multiprocessing" not in _cmdline(p)]
        if len(workers) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    # A spawned worker runs "python -c 'from multiprocessing.spawn import spawn_main ...'"; a forked one
    # keeps the parent's command line (and its imported modules).
    assert len(workers) >= 2, [_cmdline(p) for p in _children(server.proc.pid)]
    assert all(_cmdline(p) == _cmdline(server.proc.pid) for p in workers)
    response = httpx.post(server.url + "/models/iris/predict", json={"length": 5.1, "width": 2.4})
    assert response.json()["prediction"] == "virginica"


def _cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()
