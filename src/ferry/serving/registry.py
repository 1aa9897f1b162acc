"""The model registry: name@version -> handle with a state, loaded off the event loop."""

from __future__ import annotations

import contextlib
import gc
import logging
import re
import threading
from collections.abc import Callable
from pathlib import Path

from ferry.bundle.manifest import CompatRoute, bundle_label, read_manifest
from ferry.bundle.repository import scan_repository, version_key
from ferry.errors import FerryError, ModelNotFound, ModelNotReady
from ferry.runtimes import runtime_class
from ferry.runtimes.load import load_bundle, loaded_bytes, verify_bundle
from ferry.serving.handles import ModelHandle as ModelHandle  # re-exported: its old home
from ferry.serving.handles import ModelState as ModelState
from ferry.serving.inputs import InputCodec
from ferry.serving.trial import DEFAULT_TIMEOUT_S, NATIVE_RUNTIMES, TrialLoader, needs_trial, thread_count

logger = logging.getLogger("ferry.registry")


def signature(folder: Path) -> tuple[int, float]:
    """How many files a bundle folder holds and its newest mtime: a cheap "has it changed" test."""
    stats = [p.stat().st_mtime for p in folder.iterdir() if p.is_file()] if folder.is_dir() else []
    return len(stats), max(stats, default=0.0)


# An absolute path not inside a relative name or a URL: "/srv/models/x" but not "iris/1/x" or "http://h/x".
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])/(?:[^\s'\"`:,;()\[\]{}<>]+/)*([^\s'\"`:,;()\[\]{}<>/]*)")


def public_error(message: str, bundle_dir: Path) -> str:
    """A load error as ``/ready`` and ``/models`` show it: no server paths, bundle files named relatively.

    The log keeps the full message for the operator; a probe or a client learns the bundle's
    ``name/version`` and the file's name, never where the repository lives.
    """
    label = bundle_label(bundle_dir)
    for folder in sorted({str(bundle_dir), str(bundle_dir.resolve())}, key=len, reverse=True):
        message = message.replace(folder, label)
    return _ABSOLUTE_PATH.sub(lambda m: f".../{m.group(1)}", message)


class LoadEvents:
    """Every load (and reload) and every eviction, counted as they happen; the metrics sampler reads the totals.

    Loads run in threads (start-up, ``--max-memory``'s cold loads, reloads), so the counts take a lock.
    A load of a version loaded before in this process (an evicted one back, a reload) is a ``reload``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loads: dict[tuple[str, str, str, str], int] = {}  # (model, version, kind, result) -> count
        self._evictions: dict[tuple[str, str], int] = {}  # (model, version) -> count
        self._seen: set[tuple[str, str]] = set()

    def loaded(self, handle: ModelHandle, ready: bool) -> None:
        version = (handle.name, handle.version)
        with self._lock:
            kind = "reload" if version in self._seen else "load"
            self._seen.add(version)
            key = (*version, kind, "ready" if ready else "failed")
            self._loads[key] = self._loads.get(key, 0) + 1

    def evicted(self, handle: ModelHandle) -> None:
        with self._lock:
            key = (handle.name, handle.version)
            self._evictions[key] = self._evictions.get(key, 0) + 1

    def totals(self) -> tuple[dict[tuple[str, str, str, str], int], dict[tuple[str, str], int]]:
        """Copies of the load and eviction counts so far."""
        with self._lock:
            return dict(self._loads), dict(self._evictions)


class ModelRegistry:
    """Holds every version of every model in a repository, and picks the one a request means."""

    def __init__(
        self,
        repo: Path,
        trust_pickle: bool = False,
        warmup: Callable[[ModelHandle], None] | None = None,
        original: bool = False,
        trust_code: bool = False,
        lazy: bool = False,
        trial_timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.repo = repo
        self.trust_pickle = trust_pickle
        self.trust_code = trust_code  # the operator's --trust-code: import bundles' classes (and unpickle)
        self.original = original  # load original artifacts even where a compiled form exists
        self.warmup = warmup
        self.draining = False  # set on SIGTERM: readiness turns 503 while in-flight work finishes
        self.lazy = lazy  # ``--max-memory``: verify the index at start, load on demand (see serving.budget)
        self.indexed = False
        self.models: dict[str, dict[str, ModelHandle]] = {}
        self._defaults: dict[str, ModelHandle] = {}  # newest READY version per model, kept on every load
        self._listeners: list[Callable[[], None]] = []
        self.events = LoadEvents()
        # Native formats load in a child first (``ferry.serving.trial``); 0 turns it off.
        flags = {"trust_pickle": trust_pickle, "trust_code": trust_code, "original": original}
        self.trials = TrialLoader(trial_timeout, warmup, **flags) if trial_timeout > 0 else None
        for name, refs in scan_repository(repo).items():
            self.models[name] = {r.version: ModelHandle(name, r.version, r.path) for r in refs}

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (on the event loop, cheaply) whenever a model or version is added or removed."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()

    def handles(self) -> list[ModelHandle]:
        return [h for versions in self.models.values() for h in versions.values()]

    def load_all(self, before_fork: bool = False) -> None:
        """Load every bundle not loaded yet; ``before_fork``: only those a forked worker can serve as loaded.

        ``--workers N`` loads them in the parent before forking (``ferry.server.worker``), so the workers
        share one copy of each model's memory. A model whose library starts threads (which a fork does
        not carry) is left to each worker: its trial load counted them (before a fork, every model but a
        compiled one is tried), or its load here started some, and it is unloaded again.
        """
        pending = [h for h in self.handles() if h.state is ModelState.LOADING]
        if self.trials is not None:  # the trial loads, side by side
            tried = [h for h in pending if self._needs_trial(h) or (before_fork and self._runtime(h) != "compiled")]
            self.trials.prepare([(h.path, signature(h.path)) for h in tried])
        for handle in pending:
            if not before_fork:
                self.load(handle)
            elif self.survives_fork(handle):
                self._import_runtime(handle)  # (the threads its imports start, BLAS's pool, survive a fork)
                threads = thread_count()
                self.load(handle)
                if thread_count() > threads:
                    self._leave_to_workers(handle, "its load started threads, which a fork does not carry")
        # Move everything loaded so far out of the collector's reach: a full collection over the
        # frameworks' objects otherwise pauses the event loop for tens of milliseconds (and, before a
        # fork, would write to every object's header, copying the pages the workers share).
        gc.collect()
        gc.freeze()

    def survives_fork(self, handle: ModelHandle) -> bool:
        """Whether a worker forked after ``handle`` loaded here could serve it as loaded (False if unreadable).

        Ferry's compiled arrays do; any other model where its trial load started no thread (an OpenMP
        pool, once started here, would hang the workers even if each loaded its own copy). Without
        trials (``--trial-timeout 0``), a native format loads in each worker, and a Python class here,
        back in each worker if its load here starts a thread.
        """
        runtime = self._runtime(handle)
        if runtime is None:
            return False  # its own load reports why
        if runtime == "compiled":
            return True
        if self.trials is None:
            return runtime not in NATIVE_RUNTIMES
        started = self.trials.threads_started(handle.path, signature(handle.path))
        if started:
            logger.info(
                "model %s:%s: its trial load started threads (%d), which a fork does not carry; "
                "each worker loads its own copy",
                handle.name,
                handle.version,
                started,
            )
        return not started

    def _runtime(self, handle: ModelHandle) -> str | None:
        """The runtime ``handle`` loads with (``compiled`` for its numpy form); None if its manifest is unreadable."""
        try:
            manifest = read_manifest(handle.path)
        except FerryError:
            return None
        return "compiled" if manifest.options.get("compiled") and not self.original else manifest.runtime

    def _import_runtime(self, handle: ModelHandle) -> None:
        with contextlib.suppress(Exception):  # an unknown runtime: its load reports it
            runtime_class(self._runtime(handle) or "")

    def _leave_to_workers(self, handle: ModelHandle, reason: str) -> None:
        handle.model, handle.codec, handle.state = None, None, ModelState.LOADING
        self._refresh_default(handle.name)
        logger.warning("model %s:%s: %s; each worker loads its own copy", handle.name, handle.version, reason)

    def index(self) -> None:
        """Verify every bundle (manifest and artifact hashes) without loading it: UNLOADED, or FAILED."""
        for handle in self.handles():
            self.verify(handle)
        self.indexed = True

    def verify(self, handle: ModelHandle) -> None:
        handle.signature = signature(handle.path)
        try:
            handle.bytes = verify_bundle(handle.path, original=self.original)
            handle.state, handle.error = ModelState.UNLOADED, None
        except Exception as exc:  # a bad bundle must not stop the others; it shows FAILED
            message = exc.message if isinstance(exc, FerryError) else f"{type(exc).__name__}: {exc}"
            handle.state, handle.error = ModelState.FAILED, public_error(message, handle.path)
            logger.error("model %s:%s FAILED verification: %s", handle.name, handle.version, message)
            self.events.loaded(handle, ready=False)  # it will never load: a failed load, as metrics count it
        self._refresh_default(handle.name)

    def unload(self, handle: ModelHandle) -> None:
        """Release a loaded model's memory; it stays routable and loads again on its next request."""
        handle.model, handle.codec = None, None
        handle.state = ModelState.UNLOADED
        self.events.evicted(handle)
        logger.info("model %s:%s UNLOADED", handle.name, handle.version)

    def load(self, handle: ModelHandle) -> None:
        """Load one bundle; a failure marks it FAILED and is logged, never raised to the others."""
        handle.signature = signature(handle.path)
        try:
            self._try_out(handle)
            loaded = load_bundle(
                handle.path, trust_pickle=self.trust_pickle, original=self.original, trust_code=self.trust_code
            )
            handle.codec = InputCodec(loaded.manifest.input)
            handle.model, handle.warnings = loaded, loaded.warnings
            handle.bytes = loaded_bytes(handle.path, loaded.manifest, self.original)
            if self.warmup is not None:  # ready means loaded and warmed up, not merely loaded
                self.warmup(handle)
            handle.state, handle.error = ModelState.READY, None
            logger.info("model %s:%s READY", handle.name, handle.version)
            self._refresh_default(handle.name)
        except FerryError as exc:
            handle.model = None
            handle.state, handle.error = ModelState.FAILED, public_error(exc.message, handle.path)
            logger.error("model %s:%s FAILED to load: %s", handle.name, handle.version, exc.message)
        except Exception as exc:  # a broken artifact can raise anything; it must not stop the others
            handle.model = None
            handle.state, handle.error = ModelState.FAILED, public_error(f"{type(exc).__name__}: {exc}", handle.path)
            logger.exception("model %s:%s FAILED to load", handle.name, handle.version)
        self.events.loaded(handle, ready=handle.state is ModelState.READY)

    def _try_out(self, handle: ModelHandle) -> None:
        """A bundle in a native format loads in a child first: a crash or a hang there fails it alone."""
        if self.trials is not None and needs_trial(read_manifest(handle.path), self.original):
            self.trials.check(handle.path, handle.signature)

    def _needs_trial(self, handle: ModelHandle) -> bool:
        try:
            return needs_trial(read_manifest(handle.path), self.original)
        except FerryError:
            return False  # its own load reports why

    def _refresh_default(self, name: str) -> None:
        servable = (ModelState.READY, ModelState.UNLOADED)  # an UNLOADED version loads on its first request
        ready = [h for h in self.models.get(name, {}).values() if h.state in servable]
        if ready:
            self._defaults[name] = ready[-1]
        else:
            self._defaults.pop(name, None)

    # -- hot reload ---------------------------------------------------------------------------------
    def discover(self, name: str | None = None) -> list[ModelHandle]:
        """Versions on disk newer than any the registry holds (of ``name``, or of every model).

        Older versions that were released stay released; a FAILED version is tried again once its
        folder changes.
        """
        found = []
        for model, refs in scan_repository(self.repo).items():
            if name is not None and model != name:
                continue
            known = self.models.get(model, {})
            newest = max((version_key(v) for v in known), default=None)
            for ref in refs:
                held = known.get(ref.version)
                if held is None:
                    if newest is None or version_key(ref.version) > newest:
                        found.append(ModelHandle(model, ref.version, ref.path))
                elif held.state is ModelState.FAILED and held.signature != signature(ref.path):
                    found.append(ModelHandle(model, ref.version, ref.path))
        return found

    def activate(self, handle: ModelHandle) -> bool:
        """Add a version loaded off to the side (``load`` first, in a thread); only a READY one takes traffic.

        The switch is one assignment on the event loop, so it is atomic for requests. The previous
        default version is then released: requests already holding it finish on it. A version that
        failed never takes traffic; its failure shows in ``/models`` and the log.
        """
        versions = self.models.setdefault(handle.name, {})
        previous = self._defaults.get(handle.name)
        held = versions.get(handle.version)
        if handle.state is not ModelState.READY and held is not None and held.state is ModelState.READY:
            # A failed reload of a version that serves: the serving copy stays, so readiness holds.
            logger.error("model %s:%s: reload failed; the loaded copy keeps serving", handle.name, handle.version)
            return False
        versions[handle.version] = handle
        self.models[handle.name] = dict(sorted(versions.items(), key=lambda kv: version_key(kv[0])))
        self._changed()
        if handle.state is not ModelState.READY:
            return False
        self._refresh_default(handle.name)
        if previous is not None and previous.version != handle.version and self._defaults.get(handle.name) is handle:
            self.models[handle.name].pop(previous.version, None)
            self._changed()
            logger.info(
                "model %s: version %s now takes traffic; released %s", handle.name, handle.version, previous.version
            )
        return True

    def remove(self, name: str, version: str | None = None) -> list[ModelHandle]:
        """Unload one version, or every version, of a model; in-flight requests finish on what they hold."""
        versions = self.models.get(name)
        if versions is None or (version is not None and version not in versions):
            raise ModelNotFound(f"model '{name}'{f' version {version!r}' if version else ''} is not loaded")
        removed = [versions.pop(version)] if version is not None else list(versions.values())
        if not versions or version is None:
            self.models.pop(name, None)
        self._refresh_default(name)
        self._changed()
        return removed

    def get(self, name: str, version: str | None = None) -> ModelHandle:
        """The pinned version, or the newest READY one; 404 for unknown, 503 when none is ready."""
        handle = self.lookup(name, version)
        if handle.state is not ModelState.READY:
            raise ModelNotReady(f"model '{name}' version '{handle.version}' is {handle.state.value}")
        return handle

    def lookup(self, name: str, version: str | None = None) -> ModelHandle:
        """The pinned version, or the default one, in whatever state it is; 404 for unknown."""
        versions = self.models.get(name)
        if versions is None:
            known = ", ".join(sorted(self.models)) or "none"
            raise ModelNotFound(f"model '{name}' not found; served models: {known}")
        if version is not None:
            handle = versions.get(version)
            if handle is None:
                raise ModelNotFound(f"model '{name}' has no version '{version}'; versions: {', '.join(versions)}")
        else:
            handle = self._defaults.get(name) or list(versions.values())[-1]
        return handle

    def default_version(self, name: str) -> str | None:
        """The version a request that pins none gets: READY, or UNLOADED (it loads on that request)."""
        handle = self._defaults.get(name)
        return handle.version if handle is not None else None

    def newest(self, name: str) -> ModelHandle:
        return list(self.models[name].values())[-1]

    def compat_routes(self, name: str) -> list[CompatRoute]:
        """The compatibility routes the newest version of ``name`` declares; raises ``FerryError`` if unreadable.

        Read once per version: the app's routes, its auth exemptions and the dispatcher each ask, at start
        and on every change, which with a thousand bundles was thousands of YAML parses before ready.
        """
        handle = self.newest(name)
        if handle.routes is None:
            handle.routes = list(read_manifest(handle.path).routes)
        return handle.routes

    def is_ready(self) -> bool:
        """Every model has a READY version, nothing is still loading, and the server is not draining."""
        if self.draining or not self.models:
            return False
        if self.lazy:  # ready once the index is verified: every model has a version that can load
            servable = (ModelState.READY, ModelState.UNLOADED, ModelState.LOADING)
            return self.indexed and all(any(h.state in servable for h in v.values()) for v in self.models.values())
        if any(h.state is ModelState.LOADING for h in self.handles()):
            return False
        return all(any(h.state is ModelState.READY for h in v.values()) for v in self.models.values())
