"""The one model-loading policy: what reading a model file may run, and on whose trust.

Every path that reads a scikit-learn model file goes through ``load_estimator``: ``ferry build`` of files,
of an MLflow folder and of an MLServer repository (``ferry serve`` of one converts it so), and the sklearn
runtime behind ``ferry serve``, ``ferry verify`` and fetched repositories. Unpickling runs whatever the file
holds, and every type a skops file names is a callable skops may call, so:

- a skops file builds the types skops trusts by default, the classes scikit-learn itself defines and
  LightGBM's estimator classes;
- any other type it names (``posix.system``, ``builtins.eval``), and any pickle, loads only on the operator's
  trust: ``ferry build --trusted``, or the server's ``--trust-pickle`` (``--trust-code`` implies it).

What a file, or its bundle's manifest, says it needs never counts: whoever wrote the file wrote that too.
A file's kind comes from its content (``artifacts.sniff``), never its name; anything that is not a skops
file can only be unpickled, so it is treated as a pickle.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import importlib
import inspect
import io
import lzma
import pickletools
import zlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

from ferry.bundle.artifacts import FileKind, describe, sniff
from ferry.errors import UntrustedPickle

BUILD_FLAG = "--trusted"  # ferry build's option
SERVER_FLAG = "--trust-pickle"  # ferry serve / verify / containerize's option (--trust-code implies it)
_MAX_OPCODES = 1_000_000  # how far a refusal's message looks into a pickle for what it imports
# ... and how many (decompressed) bytes it reads: a bundle's compressed pickle may inflate without end, and one
# opcode may declare any length; reading stops here, so no file makes the scan hold more
_MAX_SCAN_BYTES = 16 * 1024 * 1024  # (a string read decodes to at most four times its bytes)
_MAX_NAME = 256  # a module.name longer than this is no import Python could make: not kept


@dataclass(frozen=True)
class Trust:
    """The operator's trust in code that model files run as they load, and the option that grants it."""

    granted: bool
    flag: str

    def advice(self) -> str:
        if self.flag == SERVER_FLAG:
            return (
                f"start the server with {SERVER_FLAG} only if you trust where it came from "
                "(the bundle's own `trusted: true` does not count)"
            )
        return f"pass {self.flag} only if you trust where it came from"


def check_trusted(path: Path, trust: Trust, subject: str) -> FileKind:
    """Refuse, before anything is read into objects, a file that runs code as it loads unless ``trust``
    is granted; the error names ``subject``, what would run and the option that allows it."""
    kind = sniff(path)
    if trust.granted or kind in ("lightgbm", "onnx"):  # those are read by their own libraries: no Python runs
        return kind
    if kind == "skops":
        risky = untrusted_skops_types(path)
        if risky:
            raise UntrustedPickle(
                f"{subject} names types that skops does not trust and scikit-learn does not define: "
                f"{', '.join(risky)}; skops would call them, which runs code as unpickling does; {trust.advice()}"
            )
        return kind
    held = "a pickle" if kind == "pickle" else f"{describe(kind)}, not a skops file, so only unpickling could read it"
    imports = pickle_imports(path)
    calls = f" (it imports {', '.join(imports)})" if imports else ""
    raise UntrustedPickle(f"{subject} is {held}, and unpickling runs arbitrary code{calls}; {trust.advice()}")


def load_estimator(path: Path, trust: Trust, subject: str) -> Any:
    """A skops file, or a pickle/joblib file, loaded as the policy allows (``check_trusted``)."""
    kind = check_trusted(path, trust, subject)
    if kind == "skops":
        import skops.io as sio

        # Every type is either one the policy lets load (skops' own, scikit-learn's), or the operator trusts all.
        return sio.load(path, trusted=sio.get_untrusted_types(file=path))
    import joblib

    return joblib.load(path)


# Beyond scikit-learn's own classes, the types of a LightGBM estimator as skops saves it (MLflow's lightgbm
# flavor does): Ferry's list, reviewed, never the file's. skops sets their state; LightGBM parses its model text.
# ``numpy.dtype``: skops' DTypeNode reads the dtype of an .npy array (no pickle); SimpleImputer keeps one
# (``_fit_dtype``), so the standard pipeline over mixed columns names it.
_LIBRARY_TYPES = frozenset(
    {
        "collections.OrderedDict",
        "numpy.dtype",
        "lightgbm.basic.Booster",
        "lightgbm.sklearn.LGBMClassifier",
        "lightgbm.sklearn.LGBMRanker",
        "lightgbm.sklearn.LGBMRegressor",
    }
)


def untrusted_skops_types(path: Path) -> list[str]:
    """The types a skops file names beyond skops' defaults, scikit-learn's own classes and LightGBM's estimator."""
    import skops.io as sio

    return [t for t in sio.get_untrusted_types(file=path) if t not in _LIBRARY_TYPES and not sklearn_class(t)]


def sklearn_class(dotted: str) -> bool:
    """A class that scikit-learn itself defines (a tree's ``Tree``, say): skops only sets its state."""
    module_name, _, name = dotted.rpartition(".")
    if module_name.split(".")[0] != "sklearn":
        return False
    try:
        found = getattr(importlib.import_module(module_name), name, None)
    except ImportError:
        return False
    # Defined there, not merely imported there (``sklearn.utils._joblib`` re-exports joblib's classes).
    return inspect.isclass(found) and found.__module__.split(".")[0] == "sklearn"


def model_imports(path: Path) -> list[str]:
    """The ``module.name`` of every type or function loading ``path`` would import, read without loading it:
    what an image that serves the file must have installed. A skops file lists the types it names beyond
    skops' defaults (builtins, numpy, scipy); a pickle or joblib file, compressed or not, what its opcodes
    import. Best effort: a file of another kind names nothing."""
    kind = sniff(path)
    if kind == "skops":
        import skops.io as sio

        return list(sio.get_untrusted_types(file=path))
    return pickle_imports(path, limit=None) if kind in ("pickle", "unknown") else []


def pickle_imports(path: Path, limit: int | None = 5) -> list[str]:
    """What unpickling ``path`` would import (and so may call), read with ``pickletools`` without running it;
    a joblib file compressed with zlib, gzip, bz2, xz or lzma is read through its decompressor.

    Best effort, for the refusal's message and the image's requirements: an lz4 file, or data past the
    pickle's first unreadable opcode, names nothing more.
    """
    found: dict[str, None] = {}  # in order, each once: bounded however often a file repeats an import
    recent: deque[str] = deque(maxlen=2)  # the last strings pushed: STACK_GLOBAL takes module and name from them
    memo: dict[int, str] = {}  # the memoised strings (only those: a name comes from one)
    memoised = 0  # MEMOIZE's next index counts every memoised object
    top: str | None = None  # the string on top of the stack, if it is one (what MEMOIZE and PUT store)
    with contextlib.suppress(Exception), _opened(path) as opened:  # not a pickle pickletools walks: nothing more
        fh = _Bounded(opened, _MAX_SCAN_BYTES)
        for count, (opcode, arg, _) in enumerate(pickletools.genops(cast(BinaryIO, fh))):
            name = opcode.name
            if name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
                index = arg if isinstance(arg, int) else memoised
                memoised += 1
                if top is not None and len(top) <= _MAX_NAME:
                    memo[index] = top
                else:
                    memo.pop(index, None)
                continue
            pushed = None
            imported = None
            if name in ("GLOBAL", "INST"):
                imported = str(arg).replace(" ", ".")
            elif name == "STACK_GLOBAL" and len(recent) == 2 and all(recent):
                imported = ".".join(recent)
            elif name in ("GET", "BINGET", "LONG_BINGET") and isinstance(arg, int):
                pushed = memo.get(arg)
            elif isinstance(arg, str) and "UNICODE" in name:
                pushed = arg if len(arg) <= _MAX_NAME else ""
            if imported is not None and len(imported) <= _MAX_NAME:
                found[imported] = None
            if pushed is not None:
                recent.append(pushed)
            top = pushed
            if name == "STOP" or (limit is not None and len(found) >= limit) or count > _MAX_OPCODES:
                break
    return list(found)[:limit]


def _opened(path: Path) -> BinaryIO:
    """``path`` as a stream of pickle bytes: through the decompressor its first bytes name, if one does."""
    with path.open("rb") as fh:
        head = fh.read(6)
    if head.startswith(b"\x1f\x8b"):
        return cast(BinaryIO, gzip.open(path, "rb"))
    if head.startswith(b"BZh"):
        return cast(BinaryIO, bz2.open(path, "rb"))
    if head.startswith((b"\xfd7zXZ", b"]\x00\x00")):
        return cast(BinaryIO, lzma.open(path, "rb"))  # xz, or the older lzma-alone format (FORMAT_AUTO reads both)
    if head.startswith(b"x"):  # joblib's zlib: one zlib stream
        return cast(BinaryIO, io.BufferedReader(_ZlibReader(path), 1 << 16))
    return path.open("rb")


class _Bounded:
    """What ``pickletools.genops`` reads (``read``, ``readline``, ``tell``), at most ``limit`` bytes in all: a read
    past it comes back short, which ends the walk."""

    def __init__(self, stream: BinaryIO, limit: int) -> None:
        self._stream, self._left, self._position = stream, limit, 0

    def read(self, size: int = -1) -> bytes:
        wanted = self._left if size < 0 else min(size, self._left)
        return self._counted(self._stream.read(wanted))

    def readline(self, size: int = -1) -> bytes:
        wanted = self._left if size < 0 else min(size, self._left)
        return self._counted(self._stream.readline(wanted))

    def tell(self) -> int:
        return self._position

    def _counted(self, data: bytes) -> bytes:
        self._left -= len(data)
        self._position += len(data)
        return data


class _ZlibReader(io.RawIOBase):
    """A zlib stream read as a file, a chunk at a time (the stdlib opens gzip, bz2 and lzma files, not zlib's)."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("rb")
        self._inflate = zlib.decompressobj()
        self._pending = b""
        self._position = 0  # bytes handed out: ``pickletools.genops`` asks where each opcode starts

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if (offset, whence) != (0, io.SEEK_CUR):
            raise io.UnsupportedOperation("a zlib stream is read forward only")
        return self._position

    def readinto(self, buffer: Any) -> int:
        while not self._pending:  # at most 1 MiB inflated at a time; what it could not take waits its turn
            if self._inflate.unconsumed_tail:
                compressed = self._inflate.unconsumed_tail
            elif self._inflate.eof:
                break
            else:
                compressed = self._file.read(65536)
                if not compressed:
                    break
            self._pending = self._inflate.decompress(compressed, 1 << 20)
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        self._position += count
        return count

    def close(self) -> None:
        self._file.close()
        super().close()
