"""``--workers N`` forks its workers from a parent that has imported the server (shared, copy-on-write pages)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest


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


def test_workers_fork_from_models_loaded_once(serve: Any, example_repo: Path) -> None:
    """The parent loads every model before forking, compiled ones and a Python class alike, so every worker
    serves the parent's copy: one READY line each, from the parent."""
    server = serve(str(example_repo), "--workers", "2", "--grpc-port", "0")
    for _ in range(8):  # fresh connections, spread over both workers
        answer = httpx.post(server.url + "/models/iris/predict", json={"length": 5.1, "width": 2.4}, timeout=10)
        assert answer.json()["prediction"] == "virginica"
        assert httpx.post(server.url + "/score", json={"X": [1, 2]}, timeout=10).json() == {"score": [1, 2]}
    ready = _ready_lines(server.output())
    assert sorted(model for model, _ in ready) == sorted({model for model, _ in ready}), ready  # each model once
    assert {"iris:1", "score:1"} <= {model for model, _ in ready}
    assert {pid for _, pid in ready} == {server.proc.pid}


MARKER = """
import os
import threading


class Marker:
    \"\"\"Answers the process that loaded it and the one serving: ``load() -> predict(batch)``.\"\"\"

    def load(self):
        self.loaded_by = os.getpid()
        if os.environ.get("MARKER_THREAD"):  # a class whose load starts a thread, which a fork does not carry
            self.stop = threading.Event()
            threading.Thread(target=self.stop.wait, daemon=True).start()

    def predict(self, batch):
        return [f"{self.loaded_by} {os.getpid()}" for _ in batch]
"""


def _marker_repo(folder: Path) -> Path:
    (folder / "marker.py").write_text(MARKER)
    repo = folder / "repo"
    argv = ["build", f"{folder / 'marker.py'}:Marker", "--name", "marker", "--repo", str(repo), "--features", "x"]
    built = subprocess.run(
        [sys.executable, "-m", "ferry", *argv],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert built.returncode == 0, built.stderr
    return repo


def _answers(server: Any, count: int = 12) -> set[tuple[int, int]]:
    """(loaded by, served by) over ``count`` fresh connections, spread over the workers."""
    found = set()
    for _ in range(count):
        answer = httpx.post(server.url + "/models/marker/predict", json={"x": 1}, timeout=10)
        loaded_by, served_by = map(int, answer.json()["prediction"].split())
        found.add((loaded_by, served_by))
    return found


def test_workers_serve_the_object_the_parent_loaded(serve: Any, tmp_path: Path) -> None:
    server = serve(str(_marker_repo(tmp_path)), "--workers", "2", "--grpc-port", "0")
    answers = _answers(server)
    assert {loaded_by for loaded_by, _ in answers} == {server.proc.pid}  # loaded once, in the parent
    assert server.proc.pid not in {served_by for _, served_by in answers}  # and served by the workers


@pytest.mark.parametrize(
    ("options", "said"),
    [
        ((), "its trial load started threads (1)"),
        (("--trial-timeout", "0"), "its load started threads"),  # no trial: its load in the parent, undone
    ],
)
def test_a_model_whose_load_starts_a_thread_loads_in_each_worker(
    serve: Any, tmp_path: Path, options: tuple[str, ...], said: str
) -> None:
    repo = str(_marker_repo(tmp_path))
    server = serve(repo, "--workers", "2", "--grpc-port", "0", *options, env={"MARKER_THREAD": "1"})
    assert said in server.output()
    for loaded_by, served_by in _answers(server):
        assert loaded_by == served_by != server.proc.pid


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


def test_grpc_imported_before_forking_serves_from_every_worker(serve: Any, example_repo: Path) -> None:
    """With gRPC on, its server (protobuf's messages) is imported by the parent, its pages shared by the workers,
    and each worker starts its own gRPC server on the shared port: calls over fresh connections all succeed."""
    import grpc
    import numpy as np
    from tests.conftest import free_port

    from ferry.grpc import inference_pb2 as pb
    from ferry.grpc import inference_pb2_grpc as pb_grpc

    grpc_port = free_port()
    server = serve(str(example_repo), "--workers", "2", "--grpc-port", str(grpc_port))
    assert "_upb" in Path(f"/proc/{server.proc.pid}/maps").read_text()  # the parent imported it
    data = np.array([[5.1, 2.4]])
    tensor = pb.ModelInferRequest.InferInputTensor(name="input-0", datatype="FP64", shape=list(data.shape))
    tensor.contents.fp64_contents.extend(data.ravel().tolist())
    for _ in range(8):  # fresh connections, spread over both workers
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            reply = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                pb.ModelInferRequest(model_name="iris", inputs=[tensor]), timeout=10
            )
        assert list(reply.outputs[0].contents.bytes_contents) == [b"virginica"]


def test_a_worker_starts_only_its_own_threads(serve: Any, example_repo: Path) -> None:
    """Each thread costs every worker ~0.4 MiB of private memory: a worker serving HTTP, gRPC and probes runs its
    event loop, the model pool's thread and the probe listener's, nothing else (binding gRPC's port through
    uvloop's resolver started libuv's pool of four in each)."""
    from tests.conftest import free_port

    server = serve(
        str(example_repo), "--workers", "2", "--grpc-port", str(free_port()), "--probe-port", str(free_port())
    )
    for _ in range(8):  # every worker has answered, so its model pool has started
        answer = httpx.post(server.url + "/models/iris/predict", json={"length": 5.1, "width": 2.4}, timeout=10)
        assert answer.status_code == 200
    workers = [p for p in _children(server.proc.pid) if _cmdline(p) == _cmdline(server.proc.pid)]
    assert len(workers) == 2
    for pid in workers:
        names = sorted(
            Path(f"/proc/{pid}/task/{task}/comm").read_text().strip() for task in os.listdir(f"/proc/{pid}/task")
        )
        assert len(names) <= 3 and "libuv-worker" not in names, names


def test_a_library_that_starts_threads_loads_in_each_worker(serve: Any, example_repo: Path) -> None:
    """LightGBM's OpenMP pool does not survive a fork (a forked worker's first prediction waits for it for ever):
    its trial load counts the threads, so the reviews booster loads in each worker; the forest, in the parent."""
    server = serve(str(example_repo), "--workers", "2", "--grpc-port", "0", "--original-models")
    for _ in range(8):  # fresh connections, spread over both workers
        answer = httpx.post(server.url + "/models/reviews/predict", json={"text": "最高の映画でした！"}, timeout=20)
        assert answer.status_code == 200, answer.text
    ready = _ready_lines(server.output())
    assert [pid for model, pid in ready if model == "iris:1"] == [server.proc.pid]
    reviews = {pid for model, pid in ready if model == "reviews:1"}
    assert server.proc.pid not in reviews and len(reviews) >= 1


def test_no_process_outlives_the_trial_loads(serve: Any, example_repo: Path) -> None:
    """multiprocessing's resource tracker, started beside the first trial child, is stopped once the trials are
    done (it tracks nothing of theirs, and held 8.5 MiB for the server's life)."""
    server = serve(str(example_repo), "--grpc-port", "0", "--original-models")
    tasks = Path(f"/proc/{server.proc.pid}/task").iterdir()
    children = [c for task in tasks for c in (task / "children").read_text().split()]
    assert children == [], [_cmdline(int(c)) for c in children]
