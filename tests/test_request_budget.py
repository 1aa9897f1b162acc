"""Work per request is bounded, and work nobody waits for is dropped (issue 22 item 9).

One 8 MiB body of 1,582 tiny PNGs of 2000x2000 pixels cost about 25 s of the model thread, went on after
its client left, and another model's one-image request waited behind it. Real ``ferry serve`` processes:
``--max-rows`` and ``--max-pixels`` answer 413 naming the limit (pixels read from the headers, nothing
decoded), and a batch whose callers have all gone (past their deadline here) stops decoding. The row budget,
which no timing shows, is checked on Ferry in process (``tests/inprocess.py``).
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from PIL import Image

from ferry.runtimes.images import check_request_pixels
from inprocess import inprocess_fixture  # noqa: F401 (the fixture)

BIG = 2000  # pixels a side: about 0.1 s to decode and resize on a busy 2-core machine


def tiny_png(size: int = BIG, colour: int = 0) -> bytes:
    """A 2000x2000 PNG of one colour: a few hundred bytes that decode to 4 million pixels."""
    buffer = io.BytesIO()
    Image.new("L", (size, size), colour).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def images_body(count: int, size: int = BIG) -> bytes:
    encoded = base64.b64encode(tiny_png(size)).decode()
    return orjson.dumps([{"image_data": encoded}] * count)


@pytest.fixture
def images_repo(image_repo: Path, tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    for name in ("general", "plants"):
        shutil.copytree(image_repo / name, repo / name)
    return repo


def one_image(url: str, model: str = "plants") -> tuple[int, float]:
    """Another model's one-image request: its status and how long it took."""
    started = time.monotonic()
    reply = httpx.post(
        f"{url}/models/{model}/predict", json={"image_data": base64.b64encode(tiny_png(64)).decode()}, timeout=60
    )
    return reply.status_code, time.monotonic() - started


def test_the_pixel_budget_refuses_1582_big_pngs_from_their_headers(
    images_repo: Path, serve: Callable[..., Any]
) -> None:
    server = serve(str(images_repo))  # the defaults: --max-pixels 100,000,000
    body = images_body(1582)
    assert len(body) < 8 * 1024 * 1024  # under the body limit: only the pixel budget stops it
    started = time.monotonic()
    reply = httpx.post(
        server.url + "/models/general/predict", content=body, headers={"content-type": "application/json"}, timeout=60
    )
    took = time.monotonic() - started
    assert reply.status_code == 413, reply.text
    error = reply.json()
    assert error["code"] == "payload_too_large"
    assert "more than 100000000 pixels (at `$[25]`)" in error["error"] and "--max-pixels" in error["error"]
    assert took < 3.0  # headers only: 25 s of decoding before
    status, waited = one_image(server.url)
    assert status == 200 and waited < 2.0


@pytest.mark.parametrize("protocol", ["native", "v2"])
def test_the_row_budget_is_a_413_naming_the_limit(
    example_repo: Path, inprocess: Callable[..., Any], protocol: str
) -> None:
    client = inprocess(example_repo, "--max-rows", "50").client
    row = [5.1, 2.4]

    def post(rows: int) -> httpx.Response:
        if protocol == "native":
            return client.post("/models/iris/predict", json=[row] * rows, timeout=30)
        tensor = {"name": "input", "shape": [rows, 2], "datatype": "FP64", "data": row * rows}
        return client.post("/v2/models/iris/infer", json={"inputs": [tensor]}, timeout=30)

    assert post(50).status_code == 200
    refused = post(51)
    assert refused.status_code == 413
    text = refused.text
    assert "request of 51 rows exceeds the limit of 50 rows per request (--max-rows)" in text


def test_work_past_its_deadline_is_dropped(images_repo: Path, serve: Callable[..., Any]) -> None:
    server = serve(str(images_repo), "--max-pixels", "0")  # no budget: only the deadline stops the work
    started = time.monotonic()
    one = httpx.post(
        server.url + "/models/general/predict", content=images_body(3), headers={"content-type": "application/json"}
    )
    assert one.status_code == 200
    per_image = (time.monotonic() - started) / 3
    started = time.monotonic()
    reply = httpx.post(
        server.url + "/models/general/predict",
        content=images_body(200),  # 200 x 4 M pixels: seconds of the model thread
        headers={"content-type": "application/json", "X-Request-Timeout": "0.5"},
        timeout=60,
    )
    assert reply.status_code == 504
    assert time.monotonic() - started < 3.0
    # Another model's one image: it waited for the rest of the 200 decodes; now for one at most.
    status, waited = one_image(server.url)
    assert status == 200
    assert waited < max(1.5, 20 * per_image) < 200 * per_image / 2, (waited, per_image)


def test_header_pixels_count_every_image_and_skip_unreadable_ones() -> None:
    small = tiny_png(100)
    check_request_pixels([small] * 10, 100_000)  # exactly the limit
    with pytest.raises(Exception, match=r"more than 99999 pixels \(at `\$\[9\]`\)"):
        check_request_pixels([small] * 10, 99_999)
    check_request_pixels([b"not an image", small], 10_000)  # the decode says what is wrong with it


SLOW_CLASS = """
import os, time


class Slow:
    def predict(self, X):
        with open(os.environ["FERRY_TEST_CALLS"], "a") as calls:
            calls.write(" ".join(str(row[0]) for row in X) + "\\n")
        time.sleep(1.0)
        return [row[0] for row in X]
"""


def test_work_for_a_client_that_left_is_dropped(
    tmp_path: Path, serve: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that hangs up while its request waits for the model: the model never computes it."""
    import importlib.util
    import socket
    import threading

    import ferry

    source = tmp_path / "slow.py"
    source.write_text(SLOW_CLASS)
    spec = importlib.util.spec_from_file_location("slow", source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    calls = tmp_path / "calls.txt"
    monkeypatch.setenv("FERRY_TEST_CALLS", str(tmp_path / "build-calls.txt"))
    ferry.build(module.Slow, "slow", tmp_path / "repo", features=["x"], sample_input={"x": 0.0})
    server = serve(str(tmp_path / "repo"), "--trust-code", env={**os.environ, "FERRY_TEST_CALLS": str(calls)})
    calls.write_text("")  # the warm-up's call, forgotten

    first = threading.Thread(target=lambda: httpx.post(server.url + "/models/slow/predict", json={"x": 1.0}))
    first.start()  # the model is busy with x=1 for a second
    time.sleep(0.3)
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as client:  # x=2 queues behind it, then its client goes
        body = b'{"x": 2.0}'
        head = b"POST /models/slow/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        client.sendall(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        time.sleep(0.2)
    first.join()
    third = httpx.post(server.url + "/models/slow/predict", json={"x": 3.0}, timeout=10)
    assert third.json() == {"prediction": 3.0}
    computed = calls.read_text().split()
    assert "1.0" in computed and "3.0" in computed
    assert "2.0" not in computed, computed  # the departed client's row never reached the model
