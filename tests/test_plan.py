"""ferry plan: replicas, resources and HPA from one replica's capacity."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ferry.loadtest.plan import PlanInputs, capacity_from_results, make_plan
from ferry.loadtest.schema import LoadTestError


def test_replicas_cover_the_peak_and_the_loss_of_a_zone() -> None:
    plan = make_plan(PlanInputs(target_rate=1000, replica_capacity=500, zones=3, utilization=0.7))
    # 1000 / (500 * 0.7) = 2.86 -> 3; survive one of 3 zones: 3 * 3/2 = 4.5 -> 5
    assert plan.replicas == 5
    assert plan.hpa_min == 5 and plan.hpa_max == 10 and plan.hpa_target_cpu_percent == 70
    assert any("zones" in line for line in plan.reasoning)
    values = plan.k8s_values()
    assert values["autoscaling"]["minReplicas"] == 5
    assert values["resources"]["requests"] == {"cpu": "1000m", "memory": "512Mi"}


def test_one_zone_has_no_headroom_but_never_zero_replicas() -> None:
    assert make_plan(PlanInputs(target_rate=1, replica_capacity=500, zones=1)).replicas == 1


def test_capacity_comes_from_find_max_or_a_passing_run() -> None:
    assert capacity_from_results({"max_rate": 850.0}) == 850.0
    assert capacity_from_results({"achieved_rate": 300.0, "sla": {"passed": True}}) == 300.0
    with pytest.raises(LoadTestError, match="failed its SLA"):
        capacity_from_results({"achieved_rate": 300.0, "sla": {"passed": False}})
    with pytest.raises(LoadTestError, match="never met the SLA"):
        make_plan(PlanInputs(target_rate=10, replica_capacity=0))


def test_cli_plan_from_results_writes_values(tmp_path: Path) -> None:
    results, values = tmp_path / "max.json", tmp_path / "values.json"
    results.write_text(json.dumps({"max_rate": 400.0}))
    done = subprocess.run(
        [sys.executable, "-m", "ferry", "plan", "--rate", "2000", "--sla", "p99<50ms", "--from", str(results),
         "--values", str(values)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "replicas" in done.stdout
    assert json.loads(values.read_text())["replicas"] == 12  # 2000 / (400 * 0.7) -> 8; one of 3 zones lost -> 12
