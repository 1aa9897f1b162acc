"""Which of Ferry's connection-layer guarantees granian gives out of the box (issue 25), probed on loopback.

    python bench/granian_guarantees.py

Serves iris behind granian's RSGI interface (bench/granian_pipeline.py) with granian's nearest options set
tight (--http1-header-read-timeout 2000 ms, --backpressure 8, --http1-buffer-size 65536), then plays the
scenarios of tests/test_connections.py and tests/test_slow_clients.py with raw sockets and prints what
happened in each: the status line answered, or when the server closed the connection, or that it did
neither within the probe's wait. Ferry's own answer to each is in those tests.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAD_TIMEOUT_MS = 2000
BACKPRESSURE = 8
BUFFER = 65536
WAIT_S = 6.0
PREDICT = b"POST /models/iris/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
BODY = b'{"length":5.1,"width":2.4}'


def request(extra: bytes = b"", body: bytes = BODY) -> bytes:
    return PREDICT + extra + b"Content-Length: %d\r\n\r\n" % len(body) + body


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(0.2)
    return sock


def outcome(sock: socket.socket, wait: float, trickle: bytes = b"", every: float = 0.5) -> str:
    """What the server does within ``wait`` s: its status line (and when), a close, or nothing; ``trickle``
    is sent a byte every ``every`` s meanwhile, as a slow client would."""
    start = time.monotonic()
    sent, data, next_send = 0, b"", start
    while time.monotonic() - start < wait:
        now = time.monotonic()
        if sent < len(trickle) and now >= next_send:
            try:
                sock.sendall(trickle[sent : sent + 1])
            except OSError:
                return f"closed at {now - start:.1f} s (send failed)"
            sent, next_send = sent + 1, now + every
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError as exc:
            return f"reset at {time.monotonic() - start:.1f} s ({type(exc).__name__})"
        if not chunk:
            status = data.split(b"\r\n", 1)[0].decode(errors="replace")
            return f"{status + ', then ' if data else ''}closed at {time.monotonic() - start:.1f} s"
        data += chunk
        if b"\r\n\r\n" in data and not data.startswith(b"HTTP/1.1 200"):
            head = data.split(b"\r\n\r\n", 1)[0].decode(errors="replace").split("\r\n")
            body = data.split(b"\r\n\r\n", 1)[1][:80].decode(errors="replace")
            return f"{head[0]} at {time.monotonic() - start:.1f} s, body {body!r}"
    status = data.split(b"\r\n", 1)[0].decode(errors="replace")
    return f"{status + '; ' if data else ''}nothing else within {wait:.0f} s (still open)"


def answered(port: int, timeout: float = 3.0) -> str:
    sock = connect(port)
    sock.sendall(request())
    start = time.monotonic()
    data = b""
    while time.monotonic() - start < timeout:
        try:
            data += sock.recv(65536)
        except TimeoutError:
            continue
        if b"\r\n\r\n" in data:
            sock.close()
            return f"{data.split(b' ', 2)[1].decode()} in {time.monotonic() - start:.2f} s"
    sock.close()
    return f"no answer within {timeout:.0f} s"


def scenarios(port: int) -> list[tuple[str, str]]:
    found = []
    # 1. Heads: oversized (Ferry: 431 JSON at 64 KiB), too many lines (Ferry: 431 past 100).
    for size in (100_000, 1_000_000):
        sock = connect(port)
        sock.sendall(request(b"X-Big: " + b"a" * size + b"\r\n"))
        found.append((f"head of {size // 1000:,} KB (buffer {BUFFER // 1024} KiB)", outcome(sock, 2)))
    sock = connect(port)
    sock.sendall(request(b"".join(b"X-H%d: v\r\n" % i for i in range(150))))
    found.append(("150 header lines", outcome(sock, 2)))
    # 2. Head deadline: a silent connection, and a head trickled a byte every 0.5 s (Ferry: closed / 408).
    found.append(("silent new connection", outcome(connect(port), WAIT_S)))
    found.append(("head trickled 1 byte / 0.5 s", outcome(connect(port), WAIT_S, trickle=request())))
    # 3. Idle kept-alive connection after one answer (Ferry: closed after its keep-alive timeout).
    sock = connect(port)
    sock.sendall(request())
    found.append(("idle after one request (keep-alive)", outcome(sock, WAIT_S)))
    # 4. Body deadline: a declared body trickled a byte every 0.5 s (Ferry: 408 below --min-body-rate).
    sock = connect(port)
    sock.sendall(PREDICT + b"Content-Length: %d\r\n\r\n" % len(BODY))
    found.append(("body trickled 1 byte / 0.5 s", outcome(sock, WAIT_S, trickle=BODY)))
    # 5. Declared body past --max-body-bytes / --max-inflight-bytes (Ferry: 413 / 503 before it is read).
    sock = connect(port)
    sock.sendall(PREDICT + b"Content-Length: 1000000000\r\n\r\n" + b"x" * 1000)
    found.append(("declared 1 GB body, 1 KB sent", outcome(sock, 3)))
    # 6. Connection cap: BACKPRESSURE + 4 connections stuck in their bodies, then a new client
    #    (Ferry: the slowest evicted, the newcomer served; or a JSON 503 with Retry-After).
    stuck = []
    for _ in range(BACKPRESSURE + 4):
        sock = connect(port)
        sock.sendall(PREDICT + b"Content-Length: %d\r\n\r\n{" % len(BODY))
        stuck.append(sock)
    time.sleep(0.3)
    found.append((f"new client while {len(stuck)} bodies are stuck (backpressure {BACKPRESSURE})", answered(port)))
    for sock in stuck:
        sock.close()
    stuck = [connect(port) for _ in range(BACKPRESSURE + 4)]
    time.sleep(0.3)
    found.append((f"new client while {len(stuck)} connections are silent", answered(port)))
    for sock in stuck:
        sock.close()
    # 7. Max age: one kept-alive connection asked every 0.5 s for WAIT_S (Ferry: Connection: close after 5 s).
    sock = connect(port)
    sock.settimeout(2)
    closes, start = 0, time.monotonic()
    try:
        while time.monotonic() - start < WAIT_S:
            sock.sendall(request())
            reply = sock.recv(65536)
            closes += b"connection: close" in reply.lower()
            time.sleep(0.5)
        found.append((f"keep-alive for {WAIT_S:.0f} s", f"{closes} replies with Connection: close"))
    except OSError as exc:
        found.append((f"keep-alive for {WAIT_S:.0f} s", f"closed after {time.monotonic() - start:.1f} s ({exc})"))
    return found


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="ferry-granian-guarantees-"))
    subprocess.run(["ferry", "examples", "build", str(work / "ex")], check=True, capture_output=True)
    (work / "iris").mkdir()
    (work / "ex" / "iris").rename(work / "iris" / "iris")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [sys.executable, "-m", "granian", "--interface", "rsgi", "--port", str(port), "--workers", "1"]
    argv += ["--http", "1", "--runtime-mode", "st", "--loop", "uvloop", "--log-level", "warning"]
    argv += ["--http1-header-read-timeout", str(HEAD_TIMEOUT_MS), "--backpressure", str(BACKPRESSURE)]
    argv += ["--http1-buffer-size", str(BUFFER), "bench/granian_pipeline.py:app"]
    env = {**os.environ, "FERRY_REPO": str(work / "iris"), "FERRY_LOG_LEVEL": "warning"}
    server = subprocess.Popen(argv, cwd=ROOT, env=env)
    try:
        for _ in range(300):
            try:
                if answered(port, 1).startswith("200"):
                    break
            except OSError:
                time.sleep(0.1)
        print(f"granian {' '.join(argv[3:-1])}")
        print()
        print("| scenario | granian did |")
        print("|---|---|")
        for scenario, did in scenarios(port):
            print(f"| {scenario} | {did} |")
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
