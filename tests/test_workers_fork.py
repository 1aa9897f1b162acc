"""``--workers N`` forks its workers from a parent that has imported the server (shared, copy-on-write pages)."""

from __future__ import annotations

import json
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


def test_workers_fork_from_compiled_models_loaded_once(serve: Any, example_repo: Path) -> None:
    """The parent loads the compiled models before forking, so every worker shares them; a Python class model
    (whose threads or sessions a fork would not carry) loads in each worker."""
    server = serve(str(example_repo), "--workers", "2", "--grpc-port", "0")
    for _ in range(8):  # fresh connections, spread over both workers
        answer = httpx.post(server.url + "/models/iris/predict", json={"length": 5.1, "width": 2.4}, timeout=10)
        assert answer.json()["prediction"] == "virginica"
    deadline = time.monotonic() + 30
    while len(ready := _ready_lines(server.output())) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)  # the second worker may still be loading its own Python class model
    assert [pid for model, pid in ready if model == "iris:1"] == [server.proc.pid]
    workers = {pid for model, pid in ready if model == "score:1"}
    assert len(workers) == 2 and server.proc.pid not in workers


def _ready_lines(log: str) -> list[tuple[str, int]]:
    """(model, pid) of each "model ... READY" line in a JSON log."""
    found = []
    for line in log.splitlines():
        if line.startswith("{") and line.endswith("}"):
            record = json.loads(line)
            words = record.get("msg", "").split()
            if len(words) == 3 and words[0] == "model" and words[2] == "READY":
                found.append((words[1], record["pid"]))
    return found
