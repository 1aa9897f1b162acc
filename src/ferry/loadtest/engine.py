"""A whole load test: read the schema, encode the data, run in one or several processes, summarise, gate."""

from __future__ import annotations

import multiprocessing
import queue
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from ferry.errors import LoadTestError, LoadTestUsage
from ferry.loadtest.data import encode_bodies, load_records
from ferry.loadtest.protocols import make_adapter
from ferry.loadtest.results import Recorder, summarize
from ferry.loadtest.route import parse_route, route_bodies
from ferry.loadtest.runner import LoadSpec, Tick, run_load
from ferry.loadtest.schedule import Schedule, parse_duration
from ferry.loadtest.schema import fetch_schema, v2_inputs
from ferry.loadtest.sla import Condition, evaluate
from ferry.settings import LoadTestSettings, Settings

DEFAULT_RATE = 100.0  # req/s: the open loop without --rate, and where --find-max starts


@dataclass(frozen=True)
class LoadTestOptions:
    url: str
    model: str | None = None
    protocol: str = LoadTestSettings.protocol
    data: str | None = None
    schedule: Schedule | None = None  # open loop; None with concurrency > 0 is a closed loop
    concurrency: int = 0
    duration: float = parse_duration(LoadTestSettings.duration)
    processes: int = LoadTestSettings.processes
    timeout: float = parse_duration(LoadTestSettings.timeout)
    connections: int = LoadTestSettings.connections
    grpc_target: str | None = None  # --protocol grpc: host:port (default: the URL's host, the server's gRPC port)
    route: str | None = None  # "POST /predict": any route, bodies sent as given (see ferry.loadtest.route)
    body: str | None = None  # --route: one literal JSON body


def prepare(options: LoadTestOptions) -> tuple[LoadSpec, dict[str, Any]]:
    """Resolve the model, shape the data for the protocol, and encode every body once."""
    base = options.url.rstrip("/")
    if options.route is not None:
        return _prepare_route(options, base)
    if options.body is not None:
        raise LoadTestError("--body goes with --route; the model's routes take --data")
    v2_shaped = options.protocol in ("v2", "grpc")  # gRPC carries the OIP v2 tensors
    schema = fetch_schema(base, options.model, prefer="v2" if v2_shaped else "native")
    server_v2 = v2_inputs(base, schema.name) if v2_shaped else None
    adapter = make_adapter(options.protocol, schema, server_v2)
    bodies = encode_bodies(load_records(options.data, schema), adapter)
    grpc_target = None
    if options.protocol == "grpc":
        grpc_target = options.grpc_target or f"{urlsplit(base).hostname}:{Settings.grpc_port}"
    spec = LoadSpec(
        url=f"grpc://{grpc_target}{adapter.path()}" if grpc_target else base + adapter.path(),
        grpc_target=grpc_target,
        bodies=bodies,
        schedule=options.schedule,
        concurrency=options.concurrency,
        duration=options.duration,
        timeout=options.timeout,
        connections=options.connections,
    )
    info = {
        "url": spec.url,
        "model": schema.name,
        "protocol": options.protocol,
        "mode": "open" if options.schedule is not None else "closed",
        "concurrency": options.concurrency or None,
        "processes": options.processes,
        "data": options.data or ("sample" if schema.sample_input is not None else "generated"),
        "distinct_bodies": len(bodies),
    }
    return spec, info


def _prepare_route(options: LoadTestOptions, base: str) -> tuple[LoadSpec, dict[str, Any]]:
    if options.protocol != "native":
        raise LoadTestError("--route sends bodies as given; it takes no --protocol")
    route = parse_route(options.route or "")
    bodies = route_bodies(route, options.body, options.data, lambda: fetch_schema(base, options.model))
    spec = LoadSpec(
        url=base + route.path,
        method=route.method,
        bodies=bodies,
        schedule=options.schedule,
        concurrency=options.concurrency,
        duration=options.duration,
        timeout=options.timeout,
        connections=options.connections,
    )
    info = {
        "url": spec.url,
        "model": str(route),
        "protocol": "route",
        "mode": "open" if options.schedule is not None else "closed",
        "concurrency": options.concurrency or None,
        "processes": options.processes,
        "data": "body" if options.body is not None else options.data or "sample",
        "distinct_bodies": len(bodies),
    }
    return spec, info


def run_spec(
    spec: LoadSpec, info: dict[str, Any], processes: int = LoadTestSettings.processes, on_tick: Tick | None = None
) -> dict[str, Any]:
    if spec.schedule is None and spec.concurrency <= 0:
        raise LoadTestUsage("give a rate (--rate or --ramp, open loop) or --concurrency (closed loop)")
    recorder = run_load(spec, on_tick) if processes <= 1 else _run_parallel(spec, processes, on_tick)
    requested = spec.schedule.mean_rate if spec.schedule is not None else None
    return summarize(recorder, requested, info)


def run_loadtest(options: LoadTestOptions, on_tick: Tick | None = None) -> dict[str, Any]:
    spec, info = prepare(options)
    return run_spec(spec, info, options.processes, on_tick)


def gate(summary: dict[str, Any], conditions: list[Condition]) -> dict[str, Any]:
    summary["sla"] = evaluate(conditions, summary)
    return summary


# -- several processes: each takes 1/P of the rate or the users; histograms merge exactly -------------
def _share(spec: LoadSpec, processes: int, index: int) -> LoadSpec:
    if spec.schedule is not None:
        return replace(spec, schedule=spec.schedule.scaled(1 / processes))
    users = spec.concurrency // processes + (1 if index < spec.concurrency % processes else 0)
    return replace(spec, concurrency=max(users, 1), connections=max(1, spec.connections // processes))


def _child(spec: LoadSpec, index: int, barrier: Any, out: Any) -> None:
    barrier.wait(30)
    recorder = run_load(spec, lambda snapshot: out.put(("tick", index, snapshot)))
    out.put(("done", index, recorder.state()))


def _run_parallel(spec: LoadSpec, processes: int, on_tick: Tick | None) -> Recorder:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    barrier = ctx.Barrier(processes)
    children = [
        ctx.Process(target=_child, args=(_share(spec, processes, i), i, barrier, out), daemon=True)
        for i in range(processes)
    ]
    for child in children:
        child.start()
    merged, latest, done = Recorder(), {}, 0
    try:
        while done < processes:
            try:
                kind, index, payload = out.get(timeout=1.0)
            except queue.Empty:
                if any(c.exitcode not in (None, 0) for c in children):
                    raise LoadTestError("a load generator process died; run with --processes 1 to see why") from None
                continue
            if kind == "done":
                merged.merge(payload)
                done += 1
            else:
                latest[index] = payload
                if on_tick is not None:
                    on_tick(_combine(list(latest.values())))
    finally:
        for child in children:
            child.join(5)
            if child.is_alive():
                child.terminate()
    return merged


def _combine(snapshots: list[dict[str, Any]]) -> dict[str, Any]:
    total = {k: sum(s[k] for s in snapshots) for k in ("sent", "completed", "failed", "in_flight", "rate")}
    worst = {k: max(s[k] for s in snapshots) for k in ("elapsed", "p99_ms", "max_lag_ms")}  # p99: worst process
    return {**total, **worst}


# -- capacity: the highest rate that still meets the SLA ---------------------------------------------
def find_max(
    spec: LoadSpec,
    info: dict[str, Any],
    conditions: list[Condition],
    start_rate: float,
    step_duration: float,
    processes: int = LoadTestSettings.processes,
    max_rate: float = LoadTestSettings.max_rate,
    precision: float = 0.05,
    on_step: Callable[[float, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Double the rate until the SLA fails, then bisect to ``precision``; every step is a short open loop."""
    steps: list[dict[str, Any]] = []

    def attempt(rate: float) -> bool:
        step = replace(spec, schedule=Schedule.constant(rate, step_duration))
        summary = gate(run_spec(step, info, processes), conditions)
        # A generator that fell behind did not offer the rate: count it as a failure of the step, and say so.
        passed = bool(summary["sla"]["passed"]) and not summary["generator"]["behind_schedule"]
        steps.append({"rate": rate, "passed": passed, "summary": _brief(summary)})
        if on_step is not None:
            on_step(rate, summary)
        return passed

    good, bad = 0.0, None
    rate = start_rate
    while rate <= max_rate:
        if attempt(rate):
            good, rate = rate, rate * 2
        else:
            bad = rate
            break
    if bad is None:
        bad = max_rate
    while good and bad - good > precision * good:
        middle = (good + bad) / 2
        if attempt(middle):
            good = middle
        else:
            bad = middle
    if not good and attempt(start_rate / 4):
        good = start_rate / 4
    generator_limited = any(s["summary"]["generator"]["behind_schedule"] for s in steps)
    return {
        **info,
        "mode": "find-max",
        "max_rate": round(good, 2),
        "sla": [c.text for c in conditions],
        "generator_limited": generator_limited,
        "steps": steps,
    }


def _brief(summary: dict[str, Any]) -> dict[str, Any]:
    keys = ("requested_rate", "achieved_rate", "latency_ms", "error_rate", "status_counts", "generator", "sla")
    return {k: summary[k] for k in keys}
