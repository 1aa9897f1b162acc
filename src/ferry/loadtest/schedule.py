"""Arrival schedules for the open loop: stages of linearly changing rate, as send offsets in seconds."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass

from ferry.errors import LoadTestUsage


@dataclass(frozen=True)
class Stage:
    start_rate: float
    end_rate: float
    duration: float


@dataclass(frozen=True)
class Schedule:
    stages: tuple[Stage, ...]

    @classmethod
    def constant(cls, rate: float, duration: float) -> Schedule:
        return cls((Stage(rate, rate, duration),))

    @property
    def duration(self) -> float:
        return sum(s.duration for s in self.stages)

    @property
    def mean_rate(self) -> float:
        total = sum((s.start_rate + s.end_rate) / 2 * s.duration for s in self.stages)
        return total / self.duration if self.duration else 0.0

    def scaled(self, factor: float) -> Schedule:
        return Schedule(tuple(Stage(s.start_rate * factor, s.end_rate * factor, s.duration) for s in self.stages))

    def rate_at(self, t: float) -> float:
        offset = 0.0
        for s in self.stages:
            if t < offset + s.duration:
                return s.start_rate + (s.end_rate - s.start_rate) * (t - offset) / s.duration
            offset += s.duration
        return 0.0

    def times(self) -> Iterator[float]:
        """Send offsets from the start. Within a stage, the i-th send solves r0*t + (r1-r0)*t^2/(2T) = i."""
        offset = 0.0
        for s in self.stages:
            a = (s.end_rate - s.start_rate) / (2 * s.duration) if s.duration else 0.0
            b = s.start_rate
            total = b * s.duration + a * s.duration**2
            i = 0
            while i < total:
                t = i / b if abs(a) < 1e-12 else (-b + math.sqrt(b * b + 4 * a * i)) / (2 * a)
                yield offset + t
                i += 1
            offset += s.duration


_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h)?\s*$")


def parse_duration(text: str) -> float:
    """``30s``, ``2m``, ``500ms``, ``1h`` or a bare number of seconds."""
    match = _DURATION.match(text)
    if not match:
        raise LoadTestUsage(f"not a duration: '{text}' (expected e.g. 30s, 2m, 500ms)")
    value, unit = float(match.group(1)), match.group(2) or "s"
    return value * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]


def parse_ramp(text: str) -> Schedule:
    """``100:2000:60s`` ramps from 100 to 2,000 req/s over 60 s; stages join with commas."""
    stages = []
    for part in text.split(","):
        pieces = part.strip().split(":")
        if len(pieces) != 3:
            raise LoadTestUsage(f"not a ramp stage: '{part}' (expected FROM:TO:DURATION, e.g. 100:2000:60s)")
        try:
            start, end = float(pieces[0]), float(pieces[1])
        except ValueError:
            raise LoadTestUsage(f"not a ramp stage: '{part}' (rates must be numbers)") from None
        if start <= 0 or end <= 0:
            raise LoadTestUsage(f"ramp rates must be positive: '{part}'")
        stages.append(Stage(start, end, parse_duration(pieces[2])))
    return Schedule(tuple(stages))
