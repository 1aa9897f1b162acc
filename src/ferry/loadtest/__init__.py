"""Load generation, contract checks and capacity planning against a running prediction service."""

from ferry.errors import LoadTestError
from ferry.loadtest.check import CaseResult, run_check
from ferry.loadtest.engine import LoadTestOptions, find_max, gate, prepare, run_loadtest, run_spec
from ferry.loadtest.plan import Plan, PlanInputs, make_plan
from ferry.loadtest.report import render_html, write_html
from ferry.loadtest.schedule import Schedule, parse_duration, parse_ramp
from ferry.loadtest.schema import ModelSchema, fetch_schema
from ferry.loadtest.sla import evaluate, parse_sla

__all__ = [
    "CaseResult",
    "LoadTestError",
    "LoadTestOptions",
    "ModelSchema",
    "Plan",
    "PlanInputs",
    "Schedule",
    "evaluate",
    "fetch_schema",
    "find_max",
    "gate",
    "make_plan",
    "parse_duration",
    "parse_ramp",
    "parse_sla",
    "prepare",
    "render_html",
    "run_check",
    "run_loadtest",
    "run_spec",
    "write_html",
]
