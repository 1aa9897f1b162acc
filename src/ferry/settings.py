"""Typed server settings, declared once: the CLI fills them, the environment (FERRY_*) carries them to workers."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV_PREFIX = "FERRY_"


@dataclass(frozen=True)
class Settings:
    repo: Path = Path("models")
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    trust_pickle: bool = False
    max_body_bytes: int = 8 * 1024 * 1024
    log_level: str = "info"
    model_threads: int = 1
    drain_timeout: int = 30
    model_uri: str = ""

    def to_env(self) -> dict[str, str]:
        """The settings as FERRY_* variables, so worker processes rebuild exactly these."""
        return {ENV_PREFIX + f.name.upper(): str(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = _coerce(f.type, raw)
        return cls(**values)


def _coerce(type_name: Any, raw: str) -> Any:
    name = type_name if isinstance(type_name, str) else type_name.__name__
    if name == "bool":
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if name == "int":
        return int(raw)
    if name == "Path":
        return Path(raw)
    return raw
