"""What a layout users already have (``ferry.bundle.layouts``) yields: one model to build, or why it cannot be."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class SourceModel:
    """One model of a layout: the file or MLflow folder ``ferry.build`` reads, or the problem that stops it."""

    name: str
    version: str | None
    source: Path | None
    metadata: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None
