"""The suite's own collection: CI runs it in two xdist processes, which refuse to start unless both collect the very
same test ids in the same order. An id built from a clock (gzip's header timestamp), a random value or a set's order
passes on one machine and fails CI when the two processes happen to collect in different seconds."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _collected(hash_seed: str) -> list[str]:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return [line for line in done.stdout.splitlines() if "::" in line]


def test_two_collections_a_second_apart_with_other_hash_seeds_list_the_same_ids_in_the_same_order() -> None:
    first = _collected("1")
    time.sleep(1.1)  # past a second boundary: a timestamp in an id (gzip's mtime) changes
    second = _collected("2")
    assert len(first) > 1000
    assert first == second, sorted(set(first) ^ set(second))[:10]
