"""``ferry loadtest``, ``ferry check`` and ``ferry plan``: thin commands over ``ferry.loadtest``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ferry.cli import FAILURE
from ferry.cli.errors import run as _run
from ferry.cli.options import settings_command
from ferry.errors import FerryError
from ferry.settings import LoadTestSettings

T = TypeVar("T")
out = Console()
err = Console(stderr=True)


def register(app: typer.Typer) -> None:
    app.command("loadtest")(settings_command(loadtest, LoadTestSettings, arguments=("url",)))
    app.command("check")(check_command)
    app.command("plan")(plan_command)


def loadtest(settings: LoadTestSettings) -> None:
    """Load-test a running model: open loop (--rate/--ramp) or closed loop (--concurrency)."""
    from ferry.errors import LoadTestError
    from ferry.loadtest.engine import DEFAULT_RATE, LoadTestOptions, gate, prepare, run_spec
    from ferry.loadtest.engine import find_max as search_max
    from ferry.loadtest.schedule import Schedule, parse_duration, parse_ramp
    from ferry.loadtest.sla import parse_sla

    s = settings
    rate = s.rate or DEFAULT_RATE

    def setup() -> tuple[Any, ...]:
        if sum(x is not None for x in (s.rate, s.concurrency, s.ramp)) > 1:
            raise LoadTestError("give one of --rate, --ramp or --concurrency")
        seconds = parse_duration(s.duration)
        schedule = parse_ramp(s.ramp) if s.ramp else None
        if schedule is None and s.concurrency is None:
            schedule = Schedule.constant(rate, seconds)
        conditions = parse_sla(s.sla) if s.sla else []
        if s.find_max and not conditions:
            raise LoadTestError("--find-max needs --sla: the highest rate that meets *what*?")
        options = LoadTestOptions(
            url=s.url,
            model=s.model,
            protocol=s.protocol,
            grpc_target=s.grpc_target,
            route=s.route,
            body=s.body,
            data=s.data,
            schedule=schedule,
            concurrency=s.concurrency or 0,
            duration=seconds,
            processes=max(1, s.processes),
            timeout=parse_duration(s.timeout),
            connections=s.connections,
        )
        spec, info = prepare(options)
        return options, spec, info, conditions, parse_duration(s.step_duration)

    options, spec, info, conditions, step = _run(setup)
    if s.find_max:
        err.print(f"searching the highest rate meeting [bold]{s.sla}[/bold], {step:g}s per step ...")
        result = _run(
            lambda: search_max(spec, info, conditions, rate, step, options.processes, s.max_rate, on_step=_print_step)
        )
        out.print(f"[bold]max rate within the SLA: {result['max_rate']:,.1f} req/s[/bold]")
        if result["generator_limited"]:
            err.print("[yellow]warning:[/yellow] the generator fell behind at some steps; try --processes")
        _write_json(s.json_path, result)
        raise typer.Exit(0 if result["max_rate"] > 0 else FAILURE)

    with Live(Text("starting ..."), console=err, refresh_per_second=4, transient=True) as live:

        def tick(snapshot: dict[str, Any]) -> None:
            live.update(_progress(snapshot, options), refresh=False)

        summary = _run(lambda: run_spec(spec, info, options.processes, tick))
    if conditions:
        gate(summary, conditions)
    _print_summary(summary)
    _write_json(s.json_path, summary)
    report = s.report
    if report is not None:
        from ferry.loadtest.report import write_html

        err.print(f"report written to {write_html(summary, report)}")
        _write_png(summary, report.with_suffix(".png"))
    if conditions and not summary["sla"]["passed"]:
        raise typer.Exit(FAILURE)


def _write_png(summary: dict[str, Any], path: Path) -> None:
    """The same charts as one picture; without matplotlib the HTML stands alone, and the user is told why."""
    from ferry.loadtest.plots import write_png

    try:
        err.print(f"charts written to {write_png(summary, path)}")
    except FerryError as exc:
        err.print(f"[yellow]warning:[/yellow] no PNG: {escape(exc.message)}")


def _progress(s: dict[str, Any], options: Any) -> Text:
    total = options.schedule.duration if options.schedule is not None else options.duration
    line = Text()
    line.append(f"{s['elapsed']:6.1f}/{total:g}s  ", style="bold")
    line.append(f"rate {s['rate']:8.1f} req/s  ")
    line.append(f"p99 {s['p99_ms']:8.2f} ms  ")
    line.append(f"errors {s['failed']:,}  ", style="red" if s["failed"] else "")
    line.append(f"in flight {s['in_flight']:,}  sent {s['sent']:,}")
    if s["max_lag_ms"] > 10:
        line.append(f"  generator lag {s['max_lag_ms']:.0f} ms", style="yellow")
    return line


def _print_step(rate: float, summary: dict[str, Any]) -> None:
    verdict = "[green]pass[/green]" if summary["sla"]["passed"] else "[red]fail[/red]"
    behind = " [yellow](generator behind)[/yellow]" if summary["generator"]["behind_schedule"] else ""
    lat = summary["latency_ms"]
    err.print(
        f"  {rate:10,.1f} req/s  achieved {summary['achieved_rate']:10,.1f}  p99 {lat['p99']:8.2f} ms  "
        f"errors {summary['error_rate'] * 100:.3f}%  {verdict}{behind}"
    )


def _print_summary(s: dict[str, Any]) -> None:
    table = Table(title=f"{s['model']} via {s['protocol']} ({s['mode']} loop)", show_header=False)
    requested = f"{s['requested_rate']:,.1f} req/s" if s["requested_rate"] is not None else "closed loop"
    table.add_row("requested rate", requested)
    table.add_row("achieved rate", f"{s['achieved_rate']:,.1f} req/s")
    table.add_row("throughput (2xx)", f"{s['throughput']:,.1f} req/s")
    table.add_row("requests", f"{s['completed']:,} ({s['success_rate'] * 100:.3f}% ok)")
    for key in ("p50", "p90", "p99", "p999", "max"):
        table.add_row(f"latency {key}", f"{s['latency_ms'][key]:,.2f} ms")
    table.add_row("status codes", ", ".join(f"{k}: {v:,}" for k, v in s["status_counts"].items()) or "none")
    table.add_row("errors", ", ".join(f"{k}: {v:,}" for k, v in s["errors"].items()) or "none")
    out.print(table)
    gen = s["generator"]
    if gen["behind_schedule"]:
        err.print(
            f"[yellow]warning:[/yellow] the generator fell behind schedule ({gen['late_sends']:,} sends over 10 ms "
            f"late, max {gen['max_lag_ms']:.0f} ms): latency still counts from the schedule, but the offered rate "
            "was lower; try --processes"
        )
    if "sla" in s:
        for c in s["sla"]["conditions"]:
            mark = "[green]pass[/green]" if c["passed"] else "[red]FAIL[/red]"
            out.print(f"SLA {mark}  {escape(c['detail'])}")


def _write_json(path: Path | None, value: dict[str, Any]) -> None:
    if path is not None:
        path.write_text(json.dumps(value, indent=2, ensure_ascii=False), encoding="utf-8")
        err.print(f"results written to {path}")


def check_command(
    url: Annotated[str, typer.Argument(help="Base URL of the service.")],
    model: Annotated[str | None, typer.Option(help="Model name (default: the only model served).")] = None,
    protocol: Annotated[str, typer.Option(help="native, v2, v1 or seldon.")] = LoadTestSettings.protocol,
    samples: Annotated[int, typer.Option(help="How many random valid inputs to send.")] = 5,
    oversize_mb: Annotated[int, typer.Option(help="Size of the oversized payload, in MiB.")] = 9,
    timeout: Annotated[
        str, typer.Option(help="A request with no answer after this is a hang.")
    ] = LoadTestSettings.timeout,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the results as JSON.")] = None,
) -> None:
    """Contract-test a running model from its own metadata; exit 1 when any check fails."""
    from dataclasses import asdict

    from ferry.loadtest.check import run_check
    from ferry.loadtest.schedule import parse_duration

    schema, results = _run(
        lambda: run_check(url, model, protocol, samples, oversize_mb * 1024 * 1024, parse_duration(timeout))
    )
    table = Table(title=f"contract check: {schema.name} ({schema.kind} -> {schema.output_kind})")
    for column in ("", "case", "expect", "got", "detail"):
        table.add_column(column, overflow="fold")
    for r in results:
        mark = "[green]pass[/green]" if r.passed else "[red]FAIL[/red]"
        table.add_row(mark, r.name, r.expect, str(r.status or "-"), r.detail)
    out.print(table)
    failed = [r for r in results if not r.passed]
    for r in failed:
        out.print(f"[red]failing example[/red] ({escape(r.name)}): {escape(str(r.example))}", highlight=False)
    out.print(f"{len(results) - len(failed)}/{len(results)} checks passed")
    _write_json(json_path, {"model": schema.name, "passed": not failed, "results": [asdict(r) for r in results]})
    if failed:
        raise typer.Exit(FAILURE)


def plan_command(
    rate: Annotated[float, typer.Option(help="Peak requests per second the service must carry.")],
    sla: Annotated[str, typer.Option(help="The SLA each replica must meet, e.g. 'p99<50ms'.")] = "p99<100ms",
    measure: Annotated[
        str | None, typer.Option(help="Measure one replica at this URL now (runs loadtest --find-max).")
    ] = None,
    model: Annotated[str | None, typer.Option(help="--measure: model name.")] = None,
    from_path: Annotated[Path | None, typer.Option("--from", help="A loadtest --json file (best: --find-max).")] = None,
    zones: Annotated[int, typer.Option(help="Zones or nodes to spread over; survive losing one.")] = 3,
    utilization: Annotated[float, typer.Option(help="Target utilisation of each replica, 0-1.")] = 0.7,
    cpu: Annotated[
        float, typer.Option(help="CPU cores one replica used under the load test (read it from your metrics).")
    ] = 1.0,
    memory_mib: Annotated[
        int, typer.Option(help="Resident memory of one replica under load, MiB (from your metrics).")
    ] = 512,
    step_duration: Annotated[str, typer.Option(help="--measure: length of each search step.")] = "5s",
    values: Annotated[
        Path | None, typer.Option(help="Write replicas/resources/HPA values as JSON for ferry k8s.")
    ] = None,
) -> None:
    """Recommend replicas, CPU/memory and HPA settings from one replica's measured capacity."""
    from ferry.loadtest.engine import DEFAULT_RATE, LoadTestOptions, find_max, prepare
    from ferry.loadtest.plan import PlanInputs, capacity_from_results, make_plan
    from ferry.loadtest.schedule import parse_duration
    from ferry.loadtest.schema import LoadTestError
    from ferry.loadtest.sla import parse_sla

    def capacity() -> float:
        if (measure is None) == (from_path is None):
            raise LoadTestError("give exactly one of --measure URL or --from results.json")
        if from_path is not None:
            return capacity_from_results(json.loads(from_path.read_text(encoding="utf-8")))
        assert measure is not None
        spec, info = prepare(LoadTestOptions(url=measure, model=model))
        result = find_max(spec, info, parse_sla(sla), DEFAULT_RATE, parse_duration(step_duration), on_step=_print_step)
        return float(result["max_rate"])

    measured = _run(capacity)
    inputs = PlanInputs(rate, measured, sla, zones, utilization, cpu, memory_mib)
    plan = _run(lambda: make_plan(inputs))
    for line in plan.reasoning:
        out.print(f"- {escape(line)}")
    table = Table(title=f"plan for {rate:,.0f} req/s within {sla}", show_header=False)
    table.add_row("replicas", str(plan.replicas))
    table.add_row("HPA min / max / target CPU", f"{plan.hpa_min} / {plan.hpa_max} / {plan.hpa_target_cpu_percent}%")
    table.add_row("CPU request / limit", f"{plan.cpu_request} / {plan.cpu_limit}")
    table.add_row("memory request / limit", f"{plan.memory_request} / {plan.memory_limit}")
    out.print(table)
    _write_json(values, plan.k8s_values())
