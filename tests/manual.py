"""The manual: README.md and the docs site's pages (docs/**/*.md), in one fixed order.

Tests read the blocks they run from here, never from one file, so a section moved between the README and a docs
page is still found and run. The order is README.md first, then the docs pages sorted by path: a test that splits
the text on a heading finds the first page that holds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    marker: str  # the comment line just before the fence ("" when there is none)
    page: str = "README.md"  # relative to the repository root

    def __str__(self) -> str:
        first = self.text.splitlines()[0] if self.text else ""
        return f"{self.page}:{self.line}: ```{self.lang} {first[:80]}"


def pages() -> list[Path]:
    """README.md, then every page under docs/, sorted by path."""
    return [README, *sorted(DOCS.rglob("*.md"))]


def page_name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def manual_text() -> str:
    """Every page's text, in order, one after another."""
    return "\n".join(page.read_text(encoding="utf-8") for page in pages())


def fenced_blocks(text: str, page: str = "README.md") -> list[Block]:
    """Every ``` block of ``text`` (the text of ``page``), in order."""
    lines = text.splitlines()
    blocks, start = [], None
    for number, line in enumerate(lines, 1):
        if not line.startswith("```"):
            continue
        if start is None:
            start = number
        else:
            opening = lines[start - 1]
            marker = lines[start - 2].strip() if start >= 2 else ""
            text_ = "\n".join(lines[start : number - 1]) + "\n"
            blocks.append(Block(start, opening[3:].strip(), text_, marker, page))
            start = None
    assert start is None, f"{page}:{start}: a fence is never closed"
    return blocks


def manual_blocks() -> list[Block]:
    """Every fenced block of every page, in the manual's order."""
    return [block for page in pages() for block in fenced_blocks(page.read_text(encoding="utf-8"), page_name(page))]


def marked_blocks(marker: str) -> list[Block]:
    """The blocks whose marker line is exactly ``marker``, on whichever page they are."""
    return [block for block in manual_blocks() if block.marker == marker]
