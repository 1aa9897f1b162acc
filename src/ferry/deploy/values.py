"""The values file ``ferry plan --values`` writes, read back for ``ferry k8s --values``: replicas, resources, scaling.

Unknown keys and wrong types are refused with the place named, so a typo never silently keeps a default.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import msgspec

from ferry.errors import SpecError


class _Pair(msgspec.Struct, forbid_unknown_fields=True):
    cpu: str
    memory: str


class _Resources(msgspec.Struct, forbid_unknown_fields=True):
    requests: _Pair
    limits: _Pair


class _Autoscaling(msgspec.Struct, forbid_unknown_fields=True):
    min_replicas: int | None = msgspec.field(default=None, name="minReplicas")
    max_replicas: int | None = msgspec.field(default=None, name="maxReplicas")
    cpu_percent: int | None = msgspec.field(default=None, name="targetCPUUtilizationPercentage")
    rate: float | None = msgspec.field(default=None, name="targetRequestsPerSecondPerReplica")
    concurrency: int | None = msgspec.field(default=None, name="targetConcurrencyPerReplica")


class _Sla(msgspec.Struct, forbid_unknown_fields=True):
    p99_seconds: float | None = msgspec.field(default=None, name="p99Seconds")


class _File(msgspec.Struct, forbid_unknown_fields=True):
    replicas: int | None = None
    resources: _Resources | None = None
    autoscaling: _Autoscaling = msgspec.field(default_factory=_Autoscaling)
    sla: _Sla = msgspec.field(default_factory=_Sla)


@dataclass(frozen=True)
class PlanValues:
    """Each value the file gives; None where it gives none (the command's own option or default applies)."""

    replicas: int | None = None
    max_replicas: int | None = None
    cpu: str | None = None  # "request,limit", as ``ferry k8s --cpu`` takes it
    memory: str | None = None  # "request,limit", as ``--memory`` takes it
    cpu_target_percent: int | None = None
    rate: float | None = None
    concurrency: int | None = None
    p99_seconds: float | None = None


def parse_values(data: bytes, source: str) -> PlanValues:
    try:
        raw = msgspec.json.decode(data, type=_File)
    except msgspec.DecodeError as exc:
        raise SpecError(f"{source}: {exc}") from None
    auto = raw.autoscaling
    if raw.replicas is not None and auto.min_replicas is not None and raw.replicas != auto.min_replicas:
        raise SpecError(
            f"{source}: replicas {raw.replicas} and autoscaling.minReplicas {auto.min_replicas} differ; "
            "ferry k8s uses one number for both"
        )
    r = raw.resources
    return PlanValues(
        replicas=raw.replicas if raw.replicas is not None else auto.min_replicas,
        max_replicas=auto.max_replicas,
        cpu=f"{r.requests.cpu},{r.limits.cpu}" if r else None,
        memory=f"{r.requests.memory},{r.limits.memory}" if r else None,
        cpu_target_percent=auto.cpu_percent,
        rate=auto.rate,
        concurrency=auto.concurrency,
        p99_seconds=raw.sla.p99_seconds,
    )


def load_values(path: Path) -> PlanValues:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SpecError(f"--values {path}: {exc.strerror or exc}") from None
    return parse_values(data, str(path))
