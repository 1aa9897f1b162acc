"""The docs site builds with ``mkdocs build --strict``: a broken link or anchor, a page missing from the nav or a
nav entry without its page, and the API reference's docstrings, all fail it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.manual import DOCS, pages

ROOT = Path(__file__).parent.parent


@pytest.mark.timeout(300)
def test_the_site_builds_strictly(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs", reason="mkdocs is the docs and test extras' (pip install -e '.[docs]')")
    pytest.importorskip("material", reason="the Material theme is the docs and test extras'")
    pytest.importorskip("mkdocstrings_handlers.python", reason="mkdocstrings[python] is the docs and test extras'")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8")
    assert "load_bundle" in api and "ferry.build" in api  # the reference is generated from the docstrings


def test_the_manual_is_the_readme_and_every_docs_page() -> None:
    found = pages()
    assert found[0] == ROOT / "README.md" and {p.name for p in DOCS.glob("*.md")} <= {p.name for p in found}
