"""Trial loads: a model in a native format is loaded, and its sample answered, in a child process first.

LightGBM, XGBoost, CatBoost and ONNX Runtime read a bundle's file in C++, and a file they misread can
abort the process or loop for ever; in the server that process is every model's. So such a bundle is
loaded first in a short-lived child (spawned: it inherits no threads and no OpenMP state), which runs
the registry's own warm-up on the bundle's sample. A crash, a hang past the timeout or an error there
marks the model FAILED with the reason, and the server never hands the file to the library itself.
Ferry's compiled forms are numpy arrays verified by hash and evaluated in Python: they need no trial.

The child also counts the threads that loading and answering started (an OpenMP pool: LightGBM, a
scikit-learn HistGradientBoosting): a fork carries none of them, and a forked worker's first parallel
call then waits for them for ever, so ``--workers N`` loads such a model in each worker, not in the
parent (``ModelRegistry.survives_fork``).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ferry.bundle.manifest import Manifest, bundle_label
from ferry.errors import BundleError, FerryError

if TYPE_CHECKING:
    from ferry.serving.handles import ModelHandle

logger = logging.getLogger("ferry.registry")

# The runtimes that hand a bundle's bytes to a native library. sklearn is one: a skops or pickled
# LightGBM estimator carries a LightGBM model that LightGBM parses when it is unpickled.
NATIVE_RUNTIMES = frozenset({"lightgbm", "xgboost", "catboost", "onnx", "sklearn"})
DEFAULT_TIMEOUT_S = 120.0
Outcome = tuple[str | None, int]  # (what went wrong or None, threads the load and its warm-up started)


def thread_count() -> int:
    """This process's threads, native ones included (an OpenMP pool is invisible to ``threading``)."""
    if sys.platform == "linux":
        return len(os.listdir("/proc/self/task"))
    return threading.active_count()


def needs_trial(manifest: Manifest, original: bool) -> bool:
    """Whether loading this bundle hands a file to a native library (not its compiled numpy form)."""
    compiled = bool(manifest.options.get("compiled")) and not original
    return manifest.runtime in NATIVE_RUNTIMES and not compiled


class TrialLoader:
    """Runs trial loads and remembers each bundle folder's outcome until its files change, so an evicted
    model loaded again under ``--max-memory`` is not tried again; ``prepare`` runs many side by side."""

    def __init__(self, timeout_s: float, warmup: Callable[[ModelHandle], None] | None, **flags: bool) -> None:
        self.timeout_s = timeout_s
        self.warmup = warmup if _pickles(warmup) else None  # a warm-up that cannot travel: the child only loads
        self.flags = flags  # ``load_bundle``'s trust_pickle, trust_code, original
        self._outcomes: dict[Path, tuple[tuple[int, float], Outcome]] = {}  # path -> (signature, outcome)
        self._lock = threading.Lock()
        self._running = 0  # trial children alive now

    def prepare(self, bundles: list[tuple[Path, tuple[int, float]]]) -> None:
        """Try out many bundles at once (start-up): children in parallel, one per core; ``check`` then answers."""
        if len(bundles) < 2:
            return
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="ferry-trial") as pool:
            for _ in pool.map(lambda bundle: self._outcome_of(*bundle), bundles):
                pass

    def check(self, path: Path, signature: tuple[int, float]) -> None:
        """Raise ``BundleError`` saying why, if ``path`` crashed, hung or failed in its trial load."""
        error, _ = self._outcome_of(path, signature)
        if error is not None:
            raise BundleError(error)

    def threads_started(self, path: Path, signature: tuple[int, float]) -> int:
        """How many threads loading ``path`` and answering its sample started (tried out now if not yet)."""
        return self._outcome_of(path, signature)[1]

    def _outcome_of(self, path: Path, signature: tuple[int, float]) -> Outcome:
        with self._lock:
            known = self._outcomes.get(path)
        if known is not None and known[0] == signature:
            return known[1]
        started = time.monotonic()
        with self._lock:
            self._running += 1
        try:
            outcome = self._run(path)
        finally:
            with self._lock:
                self._running -= 1
                last = self._running == 0
            if last:
                _stop_resource_tracker()
        logger.info(
            "trial load of %s: %s in %.2f s (%d threads started)",
            bundle_label(path),
            "failed" if outcome[0] else "passed",
            time.monotonic() - started,
            outcome[1],
        )
        with self._lock:
            self._outcomes[path] = (signature, outcome)
        return outcome

    def _run(self, path: Path) -> Outcome:
        """Load ``path`` and warm it up in a child: None or what went wrong, and the threads it started."""
        context = multiprocessing.get_context("spawn")
        receive, send = context.Pipe(duplex=False)
        child = context.Process(
            target=_trial,
            args=(send, path, self.flags, self.warmup),
            name=f"ferry-trial-{bundle_label(path)}",
            daemon=True,
        )
        child.start()
        send.close()  # the child holds the only writer: its death reads as end of file here
        try:
            return self._outcome(receive, child)
        finally:
            receive.close()
            if child.is_alive():
                child.kill()
            child.join()

    def _outcome(self, receive: Connection, child: Any) -> Outcome:
        """None when the child loaded and warmed up, else what went wrong, in words; and the threads it started."""
        if not receive.poll(self.timeout_s):
            return (
                f"a trial load did not finish within {self.timeout_s:g} s (loading the model or answering "
                "its sample hangs); the model is not loaded"
            ), 0
        try:
            outcome: Outcome = receive.recv()
        except EOFError:  # the child died before it could answer
            child.join(5.0)
            reason = _exit_reason(child.exitcode)
            return f"the model's library crashed the trial load ({reason}); the model is not loaded", 0
        return outcome


def _stop_resource_tracker() -> None:
    """Stop the process ``multiprocessing`` starts beside the first spawned child, once no trial runs.

    It tracks semaphores and shared memory, which a trial uses none of, and it would otherwise stay for
    the server's life: 8.5 MiB (PSS) of a server's memory. The next trial starts it again.
    """
    from multiprocessing import resource_tracker

    stop = getattr(resource_tracker._resource_tracker, "_stop", None)
    if stop is not None:
        with contextlib.suppress(Exception):  # not ours to stop (inherited over a fork): it stays
            stop()


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "it did not exit"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def _pickles(value: Any) -> bool:
    try:
        pickle.dumps(value)
    except Exception:
        return False
    return True


def _trial(send: Connection, path: Path, flags: dict[str, bool], warmup: Callable[[Any], None] | None) -> None:
    """The child: load the bundle as the registry would, run its warm-up, send None or the error, and the
    threads that started meanwhile (counted after the runtime's imports, whose pools, BLAS's, survive a fork)."""
    from ferry.bundle.manifest import read_manifest
    from ferry.runtimes import runtime_class
    from ferry.runtimes.load import load_bundle
    from ferry.serving.handles import ModelHandle
    from ferry.serving.inputs import InputCodec

    before = thread_count()
    try:
        runtime_class(read_manifest(path).runtime)
        before = thread_count()
        loaded = load_bundle(path, **flags)
        handle = ModelHandle(loaded.manifest.name, loaded.manifest.version, path, model=loaded)
        handle.codec = InputCodec(loaded.manifest.input)
        if warmup is not None:
            warmup(handle)
        message = None
    except FerryError as exc:
        message = exc.message
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}"
    send.send((message, thread_count() - before))
    send.close()
