"""The import contract in pyproject.toml holds: transports -> codecs -> serving -> bundle/runtimes -> errors."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_imports_point_inward() -> None:
    executable = shutil.which("lint-imports")
    assert executable, "import-linter is part of the test extra"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run([executable], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "0 broken" in result.stdout
