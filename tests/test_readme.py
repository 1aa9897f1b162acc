"""The manual is executable: every fenced block of README.md and of every docs page (tests/manual.py) is run by a
test or marked illustrative, with the reason.

A block's marker is an HTML comment on the line just before its opening fence:

- ``<!-- tested: tests/test_x.py::NAME -->``: that test (or fixture) reads the block from the manual
  (tests/manual.py) and runs or checks it;
- ``<!-- byom:NAME -->``: a "Bring your own model" story, run by tests/test_readme_byom.py;
- ``<!-- illustrative: REASON -->``: not run, and REASON says why (a cluster, a long benchmark, output shown).

The tests below the marker checks run the blocks that name this file, against one served copy of the examples.
"""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from tests.conftest import ServerProcess, free_port
from tests.manual import Block, fenced_blocks, manual_blocks, marked_blocks

ROOT = Path(__file__).parent.parent
MARKER = re.compile(r"<!-- (?:(tested): (\S+)|(byom):(\w+)|(illustrative): (.+?)) -->")


def readme_blocks(test: str) -> list[Block]:
    """The manual's blocks marked ``<!-- tested: tests/test_readme.py::TEST -->``, on any page."""
    tag = f"<!-- tested: tests/test_readme.py::{test} -->"
    found = marked_blocks(tag)
    assert found, f"no block of the manual is marked {tag}"
    return found


def _test_source(path: Path, name: str) -> str | None:
    """The text of the top-level test ``name`` in ``path``: its ``def`` line and every line after it up to the next
    top-level statement. (Read as text: under pytest-xdist's worker, CPython 3.11.7's ``ast.parse`` of this file
    raised SystemError "AST constructor recursion depth mismatch", in two runs of two.)"""
    lines = path.read_text(encoding="utf-8").splitlines()
    for at, line in enumerate(lines):
        if re.match(rf"(async )?def {re.escape(name)}\(", line):
            body = [line]
            for following in lines[at + 1 :]:
                if following and not following[0].isspace() and not following.startswith((")", "]", "}")):
                    break
                body.append(following)
            return "\n".join(body)
    return None


def marker_problem(block: Block) -> str | None:
    """Why ``block``'s marker does not hold, or None."""
    found = MARKER.fullmatch(block.marker)
    if found is None:
        return "no marker (<!-- tested: tests/FILE.py::TEST --> or <!-- illustrative: REASON -->) on the line before"
    if found.group(5):
        return None if len(found.group(6).split()) >= 3 else "an illustrative marker needs a reason of a few words"
    if found.group(3):
        from tests.test_readme_byom import blocks

        return None if found.group(4) in blocks() else f"tests/test_readme_byom.py runs no block byom:{found.group(4)}"
    file, _, test = found.group(2).partition("::")
    if not (ROOT / file).is_file() or not test:
        return f"{found.group(2)}: not FILE::TEST with an existing test file"
    source = _test_source(ROOT / file, test)
    if source is None:
        return f"{file} defines no {test}"
    if not any(word in source for word in ("README", "readme_block", "manual")):
        return f"{file}::{test} never reads the manual (tests/manual.py)"
    return None


def test_every_block_is_run_or_marked_illustrative() -> None:
    """On every page of the manual: README.md and docs/**/*.md."""
    blocks = manual_blocks()
    assert {block.page for block in blocks} >= {"README.md"}
    problems = [f"{block}\n    {problem}" for block in blocks if (problem := marker_problem(block))]
    assert not problems, "blocks of the manual without a valid marker:\n" + "\n".join(problems)


def test_the_check_finds_an_unmarked_block() -> None:
    text = (
        "Intro\n\n```bash\nferry build x\n```\n\n<!-- illustrative: needs a Kubernetes cluster -->\n```bash\nk\n```\n"
    )
    first, second = fenced_blocks(text)
    assert marker_problem(first) is not None and str(first).startswith("README.md:3: ```bash ferry build x")
    assert marker_problem(second) is None
    assert marker_problem(Block(1, "", "x\n", "<!-- tested: tests/nope.py::test_x -->")) is not None
    assert marker_problem(Block(1, "", "x\n", "<!-- tested: tests/test_readme.py::test_nope -->")) is not None
    assert marker_problem(Block(1, "", "x\n", "<!-- illustrative: -->")) is not None


# ------------------------------------------------------------------------------------- the blocks run here


@pytest.fixture(scope="module")
def demo(grpc_examples_server: ServerProcess) -> tuple[ServerProcess, int]:
    """The examples served as ``ferry demo`` serves them (code trusted), with gRPC on as the README's
    ``ferry serve models --grpc-port 8081`` line turns it on, on a free port instead of 8081: the session's
    server started that way (tests/conftest.py)."""
    (block,) = readme_blocks("demo")
    ((command, _),) = _commands(block)
    argv = shlex.split(command)
    assert argv[:3] == ["ferry", "serve", "models"] and argv[3:] == ["--grpc-port", "8081"], command
    return grpc_examples_server, grpc_examples_server.grpc_port


def _commands(block: Block) -> Iterator[tuple[str, str]]:
    """(command, expected output) pairs: ``$ cmd`` console lines with the lines after them, or bash lines
    with their ``# comment`` (on the same line or the next)."""
    lines = block.text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].removeprefix("$ ") if block.lang == "console" else lines[i]
        i += 1
        if not line.strip() or line.startswith("#"):
            continue
        while _unfinished(line) and i < len(lines):
            joined = line.rstrip()
            line = joined[:-1] + " " + lines[i] if joined.endswith("\\") else line + "\n" + lines[i]
            i += 1
        command, _, comment = _split_comment(line)
        expected = comment
        if block.lang == "console":
            output = []
            while i < len(lines) and not lines[i].startswith("$ "):
                output.append(lines[i])
                i += 1
            expected = "".join(output)
        elif i < len(lines) and lines[i].startswith("# {"):
            expected = lines[i][2:]
            i += 1
        yield command, expected.strip()


def _unfinished(line: str) -> bool:
    if line.rstrip().endswith("\\"):
        return True
    try:
        shlex.split(line, comments=True)
    except ValueError:  # an open quote: the command goes on
        return True
    return False


def _split_comment(line: str) -> tuple[str, str, str]:
    """``cmd  # comment`` -> (cmd, '#', comment), leaving a # inside quotes alone."""
    quote, position = None, 0
    for position, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (position == 0 or line[position - 1].isspace()):
            return line[:position].rstrip(), "#", line[position + 1 :].strip()
    return line, "", ""


def _matches(expected: str, out: str) -> bool:
    """Whether ``out`` is what the README shows: equal JSON (keys shown, as a subset), or a prefix before ``...``."""
    shortened = re.fullmatch(r"(.*?)(-?\d+\.(\d+))\.\.\..*", expected, re.S)
    if shortened:  # a number shown to some decimals: the answer, to that precision
        head, number, decimals = shortened.groups()
        got = re.match(r"-?\d+(\.\d+)?(e-?\d+)?", out.removeprefix(head))
        tolerance = 10 ** -len(decimals)
        return out.startswith(head) and got is not None and abs(float(got[0]) - float(number)) <= tolerance
    try:
        want = json.loads(expected)
    except ValueError:
        return True  # prose, not output
    got = json.loads(out)
    if isinstance(want, dict) and isinstance(got, dict):
        return all(got.get(key) == value for key, value in want.items())
    return bool(got == want)


def _curl(command: str, url: str, cwd: Path | None = None) -> tuple[int, str]:
    command = command.replace("localhost:8000", url.removeprefix("http://"))
    done = subprocess.run(
        ["bash", "-e", "-c", command + " -w '\\n%{http_code}'"], capture_output=True, text=True, timeout=30, cwd=cwd
    )
    assert done.returncode == 0, f"{command}\n{done.stderr}"
    out, _, status = done.stdout.rpartition("\n")
    return int(status), out


def test_curl_blocks(demo: tuple[ServerProcess, int]) -> None:
    """Every curl of the marked blocks answers as the README shows; 2xx unless it shows an error."""
    server, _ = demo
    ran = 0
    for block in readme_blocks("test_curl_blocks"):
        for command, expected in _commands(block):
            assert command.startswith("curl "), f"{block}: {command}"
            status, out = _curl(command, server.url)
            showing_error = '"error"' in expected
            assert (400 <= status < 500) if showing_error else status == 200, f"{command}\n{status} {out}"
            assert _matches(expected, out), f"{command}\nREADME shows {expected}\nserver said {out}"
            ran += 1
    assert ran >= 25


def _python_output(block: Block, replace: dict[str, str]) -> tuple[str, str]:
    code = block.text
    for old, new in replace.items():
        code = code.replace(old, new)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{block}\n{done.stderr}"
    shown = code.strip().splitlines()[-1].split("#", 1)[1].strip()
    return done.stdout.strip(), shown


def test_tritonclient_blocks(demo: tuple[ServerProcess, int]) -> None:
    """The tritonclient snippets (HTTP binary tensors and gRPC) print what their last comment shows."""
    pytest.importorskip("tritonclient.grpc", reason="tritonclient is a test extra")
    server, grpc_port = demo
    address = server.url.removeprefix("http://")
    for block in readme_blocks("test_tritonclient_blocks"):
        out, shown = _python_output(block, {"localhost:8000": address, "localhost:8081": f"127.0.0.1:{grpc_port}"})
        assert _matches(shown, out) and (out == shown or "..." in shown), f"{block}: printed {out}, README {shown}"


def test_routes_file_block() -> None:
    """The routes file reference parses as it is printed."""
    from ferry.routing.spec import parse_routes

    (block,) = readme_blocks("test_routes_file_block")
    routes = parse_routes(yaml.safe_load(block.text))
    assert routes.name == "classifier"


def test_manifest_routes_block(example_repo: Path) -> None:
    """The compatibility routes shown are the diabetes example's own."""
    (block,) = readme_blocks("test_manifest_routes_block")
    shown = yaml.safe_load(block.text)["routes"]
    manifest: dict[str, Any] = yaml.safe_load((example_repo / "diabetes" / "1" / "ferry.yaml").read_text())
    for route in shown:
        assert any(all(r.get(k) == v for k, v in route.items()) for r in manifest["routes"]), route


def test_deploy_blocks(example_repo: Path, tmp_path: Path) -> None:
    """The image, compose and Kubernetes blocks: each ``ferry ... -o DIR`` line writes its files here; the lines
    that build, push, run or apply need Docker, a registry or a cluster (tests/test_deploy_docker.py builds one)."""
    (tmp_path / "models").symlink_to(example_repo)
    written = []
    for block in readme_blocks("test_deploy_blocks"):
        for command, _ in _commands(block):
            argv = shlex.split(command.replace("IMAGE:TAG", "registry.example.com/team/ferry:1.0"))
            if argv[0] != "ferry" or "-o" not in argv:
                assert argv[0] in ("docker", "kubectl") or "--push" in argv, command
                continue
            done = subprocess.run([sys.executable, "-m", *argv], cwd=tmp_path, capture_output=True, text=True)
            assert done.returncode == 0, f"{command}\n{done.stderr}"
            written.append(argv[argv.index("-o") + 1])
    assert written == ["build/", "deploy/", "k8s/"]
    assert (tmp_path / "build" / "Dockerfile").is_file()
    assert (tmp_path / "deploy" / "docker-compose.yml").is_file()
    assert (tmp_path / "k8s" / "kustomization.yaml").is_file()


def _ferry(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    assert argv[0] == "ferry", argv
    return subprocess.run([sys.executable, "-m", *argv], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_check_block(demo: tuple[ServerProcess, int], tmp_path: Path) -> None:
    """``ferry check`` passes against the examples on both protocols shown; the third line's server is elsewhere."""
    server, _ = demo
    (block,) = readme_blocks("test_check_block")
    commands = [shlex.split(command) for command, _ in _commands(block)]
    assert "http://other-server:8080" in commands.pop()
    for argv in commands:
        done = _ferry([a.replace("http://127.0.0.1:8000", server.url) for a in argv], tmp_path)
        assert done.returncode == 0, f"{argv}\n{done.stdout}\n{done.stderr}"
        assert re.search(r"(\d+)/\1 checks passed", done.stdout), done.stdout


def test_trusted_pickle_block(tmp_path: Path, serve: Any) -> None:
    """A user's joblib file, built with ``--trusted`` and served with ``--trust-pickle`` (and no other trust)."""
    import joblib
    import numpy as np
    from sklearn.neighbors import KNeighborsRegressor  # no compiled form: serving it unpickles it

    joblib.dump(
        KNeighborsRegressor(n_neighbors=1).fit(np.array([[0.0, 0.0], [1.0, 1.0]]), [0.0, 2.0]),
        tmp_path / "model.joblib",
    )
    (block,) = readme_blocks("test_trusted_pickle_block")
    build, serving = (shlex.split(command) for command, _ in _commands(block))
    done = _ferry(build, tmp_path)
    assert done.returncode == 0, done.stderr
    assert serving[:3] == ["ferry", "serve", "models"]
    server = serve(str(tmp_path / "models"), *serving[3:], env={"FERRY_TRUST_CODE": "0"})
    answer = httpx.post(server.url + "/models/mine/predict", json={"x": 1.0, "y": 1.0}).json()
    assert answer == {"prediction": pytest.approx(2.0)}


def test_prediction_log_block() -> None:
    """The ``prediction_log`` excerpt is a valid part of a manifest."""
    import msgspec

    from ferry.bundle.manifest import PredictionLogSpec

    (block,) = readme_blocks("test_prediction_log_block")
    spec = msgspec.convert(yaml.safe_load(block.text)["prediction_log"], PredictionLogSpec)
    assert spec.sample_rate == 0.1 and list(spec.redact) == ["ssn", "email"]


def test_routes_errors_block() -> None:
    """The two errors shown: the routes file above with its canary's split taken out, and a bad regex."""
    from ferry.routing.spec import RoutesError, parse_routes

    shown = readme_blocks("test_routes_errors_block")[0].text.splitlines()
    reference = yaml.safe_load(readme_blocks("test_routes_file_block")[0].text)
    canary = reference["rules"][3]
    assert canary["name"] == "canary"
    canary["to"] = canary.pop("split")[0]
    bad_regex = {"rules": [{"name": "a", "match": {"headers": {"h": {"regex": "("}}}, "to": {"model": "m"}}]}
    for raw, line in zip([reference, {**bad_regex, "default": {"to": {"model": "m"}}}], shown, strict=True):
        with pytest.raises(RoutesError) as refused:
            parse_routes(raw)
        assert f"error: {refused.value}" == line


def test_access_log_block(demo: tuple[ServerProcess, int]) -> None:
    """The access-log line of a prediction has exactly the fields shown."""
    server, _ = demo
    (block,) = readme_blocks("test_access_log_block")
    body, request_id = {"length": 1.4, "width": 0.2}, "readme-access-log"
    answer = httpx.post(server.url + "/models/iris/predict", json=body, headers={"x-request-id": request_id})
    assert answer.status_code == 200
    logged: list[dict[str, Any]] = []
    deadline = time.monotonic() + 10
    while not logged and time.monotonic() < deadline:  # the line is written after the response
        time.sleep(0.1)
        lines = [json.loads(line) for line in server.output().splitlines() if line.startswith('{"')]
        logged = [r for r in lines if r.get("logger") == "ferry.access" and r.get("request_id") == request_id]
    assert logged, server.output()[-2000:]
    assert sorted(logged[0]) == sorted(re.findall(r'"(\w+)":', block.text)), logged[0]
    assert logged[0]["msg"] == "POST /models/iris/predict 200" and logged[0]["model"] == "iris"


def test_routing_reference_block(image_repo: Path, tmp_path: Path, serve: Any) -> None:
    """``ferry demo --routing``'s answers, from the same two models served with the reference routes file; the
    user's photo is the plants model's own sample image."""
    import base64

    (block,) = readme_blocks("test_routing_reference_block")
    commands = list(_commands(block))
    assert commands.pop(0)[0] == "ferry demo --routing"
    manifest = yaml.safe_load((image_repo / "plants" / "1" / "ferry.yaml").read_text())
    (tmp_path / "flower.jpg").write_bytes(base64.b64decode(manifest["sample_input"]["image_data"]))
    routes = ROOT / "src" / "ferry" / "examples" / "data" / "routes.yaml"
    server = serve(str(image_repo), "--routes", str(routes))
    for command, expected in commands:
        if not command.startswith("curl "):
            done = subprocess.run(["bash", "-e", "-c", command], cwd=tmp_path, capture_output=True, text=True)
            assert done.returncode == 0, f"{command}\n{done.stderr}"
            continue
        status, out = _curl(command, server.url, cwd=tmp_path)
        assert status == 200 and json.loads(out) == json.loads(expected), f"{command}\n{status} {out}"


def test_gateway_block(image_repo: Path, tmp_path: Path, serve: Any) -> None:
    """The same two models behind ``ferry gateway``, each in its own server, as the block runs them; the ports
    are free ones, written into a copy of the reference routes file in place of 8001 and 8002."""
    (block,) = readme_blocks("test_gateway_block")
    commands = [command for command, _ in _commands(block)]
    assert commands[0] == "ferry examples build --images images"  # what image_repo holds, built once per run
    (tmp_path / "images").symlink_to(image_repo)
    done = subprocess.run(["bash", "-e", "-c", commands[1]], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    ports = {}
    for command in commands[2:4]:
        argv = shlex.split(command.rstrip("& "))
        at = argv.index("--port")
        assert argv[:2] == ["ferry", "serve"]
        ports[argv[at + 1]] = serve(str(tmp_path / argv[2]), *argv[3:at], *argv[at + 2 :]).port
    argv = shlex.split(commands[4])
    routes = (ROOT / argv[2]).read_text()
    for readme_port, port in ports.items():
        routes = routes.replace(f"127.0.0.1:{readme_port}", f"127.0.0.1:{port}")
    (tmp_path / "routes.yaml").write_text(routes)
    port = free_port()
    with (tmp_path / "gateway.log").open("wb") as log:
        gateway = subprocess.Popen(
            [sys.executable, "-m", "ferry", "gateway", "routes.yaml", "--port", str(port)],
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:  # the gateway is ready once both upstreams' health checks pass
        deadline = time.monotonic() + 60
        while not _answers(f"http://127.0.0.1:{port}/ready") and time.monotonic() < deadline:
            assert gateway.poll() is None, (tmp_path / "gateway.log").read_text()
            time.sleep(0.1)
        assert len(commands) == 6 and commands[5].endswith("localhost:8080/predict/test")
        status, out = _curl(commands[5].replace("localhost:8080", f"127.0.0.1:{port}"), "")
        assert status == 200 and json.loads(out) == {"prediction": "flower"}, out  # the plants model's answer
    finally:
        gateway.terminate()
        gateway.wait(30)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def test_onnx_classifier_block(tmp_path: Path, serve: Any) -> None:
    """The ONNX image recipe as printed, on a stand-in for the user's export: a [N, 3, 224, 224] softmax graph
    (tests/test_images.py checks the preprocessing itself), two labels, and a real image as the sample."""
    import numpy as np
    from PIL import Image

    from ferry.examples.images import png_base64, softmax_onnx

    weights = np.random.default_rng(1).normal(size=(3 * 224 * 224, 2)).astype(np.float32)
    softmax_onnx(weights, np.zeros(2, dtype=np.float32), [3, 224, 224], tmp_path / "mobilenet_v2.onnx")
    (tmp_path / "imagenet_labels.txt").write_text("tabby\nteapot\n")
    (block,) = readme_blocks("test_onnx_classifier_block")
    assert block.text.count("<base64 of a small sample image>") == 1
    code = block.text.replace("<base64 of a small sample image>", png_base64(Image.new("RGB", (32, 32), "teal")))
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    server = serve(str(tmp_path / "models"))
    assert httpx.get(server.url + "/label").json() == ["tabby", "teapot"]
    assert httpx.get(server.url + "/predict/test").json()["prediction"] in ("tabby", "teapot")


def _serve_lines(block: Block, tmp_path: Path) -> Iterator[tuple[dict[str, str], list[str]]]:
    """(environment, arguments after ``ferry serve models``) of each line, log paths moved into ``tmp_path``."""
    for command, _ in _commands(block):
        words = shlex.split(command.replace("/var/log/ferry/", f"{tmp_path}/"))
        at = words.index("ferry")
        assert words[at : at + 3] == ["ferry", "serve", "models"], command
        yield dict(word.split("=", 1) for word in words[:at]), words[at + 3 :]


def test_tracing_blocks(example_repo: Path, tmp_path: Path, serve: Any) -> None:
    """Each ``--tracing`` form serves, and traces a prediction: spans on stdout or in the file; for otlp, with the
    collector's variables set, the server answers while its exporter has no collector to reach."""
    iris = {"length": 1.4, "width": 0.2}
    lines = [line for block in readme_blocks("test_tracing_blocks") for line in _serve_lines(block, tmp_path)]
    targets = ["otlp", "console", str(tmp_path / "spans.jsonl"), "otlp"]
    assert [args for _, args in lines] == [["--tracing", target] for target in targets]
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in lines[3][0]
    for env, args in lines:
        server = serve(str(example_repo), *args, env=env)
        assert httpx.post(server.url + "/models/iris/predict", json=iris).status_code == 200
        # otlp: no collector is there, and a graceful stop would spend its export retries on it
        server.stop(signal.SIGKILL if args[1] == "otlp" else signal.SIGTERM)
        if args[1] == "console":
            assert '"name": "predict iris"' in server.log_path.read_text()
        elif args[1] != "otlp":
            assert any(json.loads(line)["name"] == "predict iris" for line in Path(args[1]).read_text().splitlines())


def test_prediction_log_serve_block(example_repo: Path, tmp_path: Path, serve: Any) -> None:
    """``--prediction-log FILE`` with the size given: the records of a model that opts in reach the file; then
    ``ferry monitor`` over it and its rotated part, with and without the optional arguments."""
    import shutil

    shutil.copytree(example_repo / "iris", tmp_path / "models" / "iris")
    manifest_path = tmp_path / "models" / "iris" / "1" / "ferry.yaml"
    manifest = yaml.safe_load(manifest_path.read_text())
    manifest["prediction_log"] = {"sample_rate": 1.0}
    manifest_path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    ((env, args),) = _serve_lines(readme_blocks("test_prediction_log_serve_block")[0], tmp_path)
    server = serve(str(tmp_path / "models"), *args, env=env)
    for body in [{"length": 1.4, "width": 0.2}] * 3 + [{"length": 5.1, "width": 2.4}]:
        assert httpx.post(server.url + "/models/iris/predict", json=body).status_code == 200
    server.stop()  # the writer thread flushes at exit
    log = tmp_path / "predictions.jsonl"
    records = log.read_text().splitlines(keepends=True)
    assert [json.loads(r)["outputs"] for r in records] == [["setosa"]] * 3 + [["virginica"]]
    (tmp_path / "predictions.jsonl.1").write_text("".join(records[:2]))  # the older half, as rotation leaves it
    log.write_text("".join(records[2:]))

    (block,) = readme_blocks("test_prediction_log_serve_block")[1:]
    (command, _), *_ = _commands(block)
    full = shlex.split(command.replace("[", "").replace("]", ""))
    short = shlex.split(re.sub(r" \[[^]]*\]", "", command))
    assert full == [*short, "--intervals", "6", "--json"]
    printed = _ferry(short, tmp_path)
    assert printed.returncode == 0 and "iris" in printed.stdout, printed.stdout + printed.stderr
    summary = _ferry(full, tmp_path)
    assert summary.returncode == 0, summary.stderr
    assert '"iris"' in summary.stdout and json.loads(summary.stdout), summary.stdout


def test_loadtest_block(demo: tuple[ServerProcess, int], tmp_path: Path) -> None:
    """The load-test lines against the examples, each run shortened to a second (every ``Ns`` becomes ``1s``).
    Not run: the 1,000 req/s ``p99<50ms`` gate, which a shared 2-core box cannot promise, and ``--find-max``, a
    search of many steps; tests/test_loadtest.py runs both forms with a loose gate."""
    server, _ = demo
    (block,) = readme_blocks("test_loadtest_block")
    commands = [shlex.split(command) for command, _ in _commands(block)]
    gate, find_max = commands.pop(2), commands.pop()
    assert "--sla" in gate and "--find-max" in find_max
    assert len(commands) == 4
    for argv in commands:
        argv = [re.sub(r"\b\d+s\b", "1s", a.replace("http://127.0.0.1:8000", server.url)) for a in argv]
        done = _ferry(argv, ROOT)
        assert done.returncode == 0, f"{argv}\n{done.stdout}\n{done.stderr}"
        assert re.search(r"status codes\s+│\s+200: [\d,]+", done.stdout), done.stdout
