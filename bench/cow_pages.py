"""Which pages does predicting copy into a forked worker? A scikit-learn model's copy-on-write cost, page by page.

    python bench/cow_pages.py MODEL.skops [--warm 10] [--calls 3] [--features 20]

Loads the model (skops, every type in the file trusted: run it on your own files only), predicts ``--warm`` times,
freezes the collector and forks, as ``ferry serve --workers N`` does. The child predicts ``--calls`` times and reads
``/proc/self/pagemap``: a writable anonymous page that was shared with the parent and is now mapped by the child
alone was copied by the predictions (CPython writes a reference count on every object it reads, and counters into
the code it runs). Each such page is named by the first object found on it: the model's estimators, their
``__dict__`` and trees, the code objects of each package, or the type of any other object the collector tracks.
"""

from __future__ import annotations

import argparse
import collections
import gc
import os
import struct
import sys
import types
import warnings
from pathlib import Path
from typing import Any

import numpy as np

PAGE = os.sysconf("SC_PAGE_SIZE")


def writable_anonymous() -> list[tuple[int, int]]:
    found = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split()
        if "w" in parts[1] and (len(parts) < 6 or parts[5] == "[heap]"):
            start, end = (int(value, 16) for value in parts[0].split("-"))
            found.append((start, end))
    return found


def exclusive_pages() -> set[int]:
    """Present pages mapped by this process alone (pagemap bit 56, Linux 4.2+)."""
    pages = set()
    with open("/proc/self/pagemap", "rb") as pagemap:
        for start, end in writable_anonymous():
            pagemap.seek(start // PAGE * 8)
            entries = pagemap.read((end - start) // PAGE * 8)
            for i, (entry,) in enumerate(struct.iter_unpack("<Q", entries)):
                if entry >> 63 and (entry >> 56) & 1:
                    pages.add(start // PAGE + i)
    return pages


class Labels:
    def __init__(self) -> None:
        self.by_page: dict[int, str] = {}

    def mark(self, address: int, size: int, label: str) -> None:
        for page in range(address // PAGE, (address + max(size, 1) - 1) // PAGE + 1):
            self.by_page.setdefault(page, label)

    def model(self, model: Any) -> None:
        for estimator in getattr(model, "estimators_", []):
            self.mark(id(estimator), sys.getsizeof(estimator), "an estimator")
            self.mark(id(vars(estimator)), sys.getsizeof(vars(estimator)), "an estimator's __dict__")
            tree = getattr(estimator, "tree_", None)
            if tree is not None:
                self.mark(id(tree), sys.getsizeof(tree), "an estimator's Tree")
                self.mark(tree.value.ctypes.data, tree.value.nbytes, "a Tree's values")
                self.mark(tree.children_left.ctypes.data, tree.node_count * 64, "a Tree's nodes")
        self.mark(id(model), sys.getsizeof(model), "the model")

    def code(self) -> None:
        seen: set[int] = set()

        def walk(code: types.CodeType, package: str) -> None:
            if id(code) in seen:
                return
            seen.add(id(code))
            self.mark(id(code), sys.getsizeof(code), f"code of {package}")
            for const in code.co_consts:
                if isinstance(const, types.CodeType):
                    walk(const, package)

        for name, module in list(sys.modules.items()):
            for value in list(getattr(module, "__dict__", {}).values()):
                candidates = [value, *(vars(value).values() if isinstance(value, type) else ())]
                for candidate in candidates:
                    try:
                        code = getattr(getattr(candidate, "__func__", candidate), "__code__", None)
                    except Exception:  # a lazy module's attribute that imports on access
                        continue
                    if isinstance(code, types.CodeType):
                        walk(code, name.split(".")[0])

    def tracked(self) -> None:
        for obj in gc.get_objects():
            kind = type(obj)
            self.mark(id(obj), sys.getsizeof(obj), f"a {kind.__module__}.{kind.__qualname__}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--warm", type=int, default=10)
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--features", type=int, default=20)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import skops.io

    model = skops.io.load(args.model, trusted=skops.io.get_untrusted_types(file=args.model))
    predict = getattr(model, "predict_proba", model.predict)
    rows = np.zeros((1, args.features))
    for _ in range(args.warm):
        predict(rows)
    gc.collect()
    labels = Labels()
    labels.model(model)
    labels.code()
    labels.tracked()
    gc.freeze()
    child = os.fork()
    if child == 0:
        before = exclusive_pages()
        for _ in range(args.calls):
            predict(rows)
        copied = exclusive_pages() - before
        kinds = collections.Counter(labels.by_page.get(page, "(no tracked object found)") for page in copied)
        print(f"{args.model}: {len(copied)} pages ({len(copied) * PAGE / 2**20:.2f} MiB) copied by {args.calls} calls")
        for label, count in kinds.most_common(15):
            print(f"  {count:5d}  {label}")
        os._exit(0)
    os.waitpid(child, 0)


if __name__ == "__main__":
    main()
