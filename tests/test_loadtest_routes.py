"""``ferry loadtest --route`` on a bundle's own compatibility routes, and the PNG written beside the HTML report."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import ServerProcess
from ferry.loadtest.engine import LoadTestOptions, prepare, run_loadtest
from ferry.loadtest.plots import write_png
from ferry.loadtest.report import LINE_COLOURS, status_colour
from ferry.loadtest.route import parse_route
from ferry.loadtest.schedule import Schedule
from ferry.loadtest.schema import LoadTestError


@pytest.fixture
def examples(examples_server: ServerProcess) -> ServerProcess:
    return examples_server  # the session's server over the examples (tests/conftest.py)


def ferry(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ferry", *args], capture_output=True, text=True, timeout=120)


def test_compat_post_predict_with_a_json_body(examples: Any, tmp_path: Path) -> None:
    out, report = tmp_path / "r.json", tmp_path / "r.html"
    done = ferry("loadtest", examples.url, "--route", "POST /predict", "--body", '{"length":5.1,"width":2.4}',
                 "--rate", "40", "--duration", "1s", "--json", str(out), "--report", str(report))  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["url"] == examples.url + "/predict" and result["model"] == "POST /predict"
    assert result["status_counts"] == {"200": 40}, result["errors"]
    assert report.is_file() and (tmp_path / "r.png").is_file()
    assert f"charts written to {tmp_path / 'r.png'}" in done.stderr.replace("\n", "")


def test_routes_take_get_queries_and_the_models_own_records(examples: Any, tmp_path: Path) -> None:
    summary = run_loadtest(
        LoadTestOptions(examples.url, route="GET /prediction/?f=0.05", schedule=Schedule.constant(20, 0.5))
    )
    assert summary["status_counts"] == {"200": 10}, summary["errors"]
    # No --body: the model's sample goes out as a native body, on the bundle's route.
    summary = run_loadtest(
        LoadTestOptions(examples.url, model="iris", route="POST /predict", schedule=Schedule.constant(20, 0.5))
    )
    assert summary["status_counts"] == {"200": 10}, summary["errors"]
    data = tmp_path / "scores.jsonl"
    data.write_text('{"X": [1, 2]}\n{"X": [3, 4]}\n')
    spec, info = prepare(
        LoadTestOptions(examples.url, route="POST /score", data=str(data), schedule=Schedule.constant(20, 0.5))
    )
    assert spec.bodies == [b'{"X":[1,2]}', b'{"X":[3,4]}'] and info["distinct_bodies"] == 2
    # A wrong body is measured as the service answers it, not hidden.
    summary = run_loadtest(
        LoadTestOptions(examples.url, route="POST /predict", body='{"length":"x"}', schedule=Schedule.constant(20, 0.5))
    )
    assert summary["status_counts"] == {"400": 10}
    assert list(summary["errors"]) == ["http 400 invalid_input"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"route": "predict"}, "expected METHOD /path"),
        ({"route": "POST /predict", "body": "{length"}, "--body is not JSON"),
        ({"route": "GET /isAlive", "body": "{}"}, "sends no body"),
        ({"route": "POST /predict", "protocol": "v2"}, "takes no --protocol"),
        ({"body": "{}"}, "--body goes with --route"),
    ],
)
def test_bad_route_options_say_what_is_expected(options: dict[str, str], message: str) -> None:
    with pytest.raises(LoadTestError, match=message):
        prepare(LoadTestOptions("http://127.0.0.1:9", schedule=Schedule.constant(1, 1), **options))


def test_parse_route_keeps_the_path_as_given() -> None:
    route = parse_route("GET /prediction/?f=0.05")
    assert (route.method, route.path, str(route)) == ("GET", "/prediction/?f=0.05", "GET /prediction/?f=0.05")


def colours(png: Path) -> set[tuple[int, int, int]]:
    from PIL import Image

    with Image.open(png) as image:
        return {pixel[:3] for pixel in image.convert("RGB").getdata()}


def rgb(hex_colour: str) -> tuple[int, int, int]:
    return int(hex_colour[1:3], 16), int(hex_colour[3:5], 16), int(hex_colour[5:7], 16)


def test_png_draws_every_percentile_and_every_status(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    timeline = [
        {
            "t": t,
            "requests": 10,
            "status_counts": {"200": 8, "503": 2},
            "latency_ms": {"p50": 1.0 + t, "p90": 3.0 + t, "p99": 9.0 + t},
        }
        for t in range(5)
    ]
    png = write_png({"model": "iris", "mode": "open", "url": "http://x", "timeline": timeline}, tmp_path / "r.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    drawn = colours(png)
    for colour in [*LINE_COLOURS.values(), status_colour("200"), status_colour("503")]:
        assert rgb(colour) in drawn, colour  # each percentile line and each status band is on the picture


def test_readme_route_commands_run(examples: Any, tmp_path: Path) -> None:
    """The README's block, against the examples, with each run shortened to a second."""
    import shlex

    from tests.manual import manual_text

    readme = manual_text()
    block = readme.split("Any route, such as a bundle's own compatibility routes", 1)[1]
    block = block.split("```bash\n", 1)[1].split("```", 1)[0].replace("\\\n", " ")
    (tmp_path / "scores.jsonl").write_text('{"X": [1, 2]}\n')
    commands = [line for line in block.splitlines() if line.strip()]
    assert len(commands) == 3
    for command in commands:
        argv = shlex.split(command.replace("http://127.0.0.1:8000", examples.url))
        argv = [a.replace("20s", "1s").replace("10s", "1s") for a in argv]
        done = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert done.returncode == 0, f"{command}\n{done.stderr}"
        assert re.search(r"status codes\s+│\s+200: [\d,]+\s+│", done.stdout), done.stdout  # only 200s
        assert re.search(r"errors\s+│\s+none\s+│", done.stdout), done.stdout
    assert (tmp_path / "report.html").is_file() and (tmp_path / "report.png").is_file()
