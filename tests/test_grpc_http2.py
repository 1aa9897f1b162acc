"""Ferry's HTTP/2 framing for gRPC (``ferry.grpc.http2``) against a raw client: what a hostile or broken peer
can send, and the bound each meets.

A real server on loopback, in a thread with its own event loop, with small limits; the service behind it is
a few methods at the ``Service`` seam (echo, metadata, a call that waits until cancelled). The client writes
frames by hand (``hpack`` encodes its header blocks) and reads what comes back.
"""

from __future__ import annotations

import ast
import asyncio
import gzip
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hpack import Decoder, Encoder

from conftest import ServerProcess, free_port
from ferry.grpc import inference_pb2 as pb
from ferry.grpc.frames import Call, GrpcError, Limits, StatusCode, status_block
from ferry.grpc.http2 import GrpcServer
from ferry.server.ports import bind_listener

DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 3, 4, 6, 7, 8, 9
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
LIMITS = Limits(
    max_message=1000,
    max_header_bytes=4096,
    max_headers=20,
    max_streams=2,
    max_connections=4,
    header_timeout=0.5,
    message_timeout=0.5,
    idle_timeout=60.0,
    resets_per_second=5,
    empty_frames=10,
)


@dataclass
class Recorder:
    """The service: what it was asked, and which calls it saw end."""

    released: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)

    def admit(self, call: Call) -> None:
        if call.method == "/t/Refuse":
            raise GrpcError(StatusCode.PERMISSION_DENIED, "refused: 100% sure")
        if call.method == "/t/Small":
            call.largest = 10

    def received(self, call: Call) -> None:
        pass

    async def handle(self, call: Call) -> bytes:
        if call.method == "/t/Wait":
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                self.cancelled.append(call.method)
                raise
        if call.method == "/t/Slow":
            await asyncio.sleep(0.3)
        if call.method == "/t/Meta":
            return repr((call.metadata, call.deadline is not None)).encode()
        return call.message

    def release(self, call: Call) -> None:
        self.released.append(call.method)


@dataclass
class Running:
    port: int
    service: Recorder
    server: GrpcServer
    loop: asyncio.AbstractEventLoop


def _serve(limits: Limits) -> Iterator[Running]:
    loop = asyncio.new_event_loop()
    service = Recorder()
    server = GrpcServer(service, limits)
    started = threading.Event()
    sock = bind_listener("127.0.0.1", 0, shared=False)
    port = sock.getsockname()[1]

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start(sock))
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(5)
    yield Running(port, service, server, loop)
    asyncio.run_coroutine_threadsafe(server.stop(0.1), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


@pytest.fixture
def running() -> Iterator[Running]:
    yield from _serve(LIMITS)


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">L", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">L", stream) + payload


def message(body: bytes) -> bytes:
    return b"\x00" + struct.pack(">L", len(body)) + body


class Client:
    def __init__(self, port: int, settings: bytes = b"", rcvbuf: int = 0) -> None:
        self.sock = socket.socket()
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(5)
        self.sock.connect(("127.0.0.1", port))
        self.encoder, self.decoder = Encoder(), Decoder()
        self.buffer = b""
        self.sock.sendall(PREFACE + frame(SETTINGS, 0, 0, settings))

    def send(self, *frames: bytes) -> None:
        self.sock.sendall(b"".join(frames))

    def headers(self, sid: int, path: str, extra: list[tuple[str, str]] | None = None, end: bool = False) -> bytes:
        fields = [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "t")]
        fields += [("content-type", "application/grpc"), ("te", "trailers"), *(extra or [])]
        return frame(HEADERS, END_HEADERS | (END_STREAM if end else 0), sid, self.encoder.encode(fields))

    def call(self, sid: int, path: str, body: bytes, extra: list[tuple[str, str]] | None = None) -> bytes:
        return self.headers(sid, path, extra) + frame(DATA, END_STREAM, sid, message(body))

    def frame(self) -> tuple[int, int, int, bytes] | None:
        """The next frame, or None once the server has closed the connection."""
        while len(self.buffer) < 9 or len(self.buffer) < 9 + int.from_bytes(self.buffer[:3], "big"):
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buffer += chunk
        size = int.from_bytes(self.buffer[:3], "big")
        kind, flags, sid = self.buffer[3], self.buffer[4], int.from_bytes(self.buffer[5:9], "big")
        payload, self.buffer = self.buffer[9 : 9 + size], self.buffer[9 + size :]
        return kind, flags, sid, payload

    def reply(self, sid: int) -> tuple[dict[str, str], bytes, dict[str, str]]:
        """Headers, DATA and trailers of stream ``sid`` (a trailers-only reply: both dicts the same)."""
        blocks: list[dict[str, str]] = []
        data = b""
        while True:
            got = self.frame()
            assert got is not None, "the connection closed before the reply ended"
            kind, flags, stream, payload = got
            if stream != sid:
                continue
            if kind == HEADERS:
                blocks.append(dict(self.decoder.decode(payload)))
            elif kind == DATA:
                data += payload
            elif kind == RST_STREAM:
                raise AssertionError(f"stream reset: {int.from_bytes(payload, 'big')}")
            if flags & END_STREAM and kind in (HEADERS, DATA):
                return blocks[0], data, blocks[-1]

    def until(self, kind: int) -> tuple[int, int, int, bytes] | None:
        while (got := self.frame()) is not None:
            if got[0] == kind:
                return got
        return None

    def goaway(self) -> int:
        got = self.until(GOAWAY)
        assert got is not None, "no GOAWAY"
        return int(struct.unpack(">LL", got[3][:8])[1])

    def closed(self) -> bool:
        try:
            return self.until(-1) is None
        except ConnectionResetError:  # closed with the client's frames unread: gone all the same
            return True
        except TimeoutError:
            return False


def test_a_call_its_headers_message_and_trailers(running: Running) -> None:
    client = Client(running.port)
    client.send(client.call(1, "/t/Echo", b"hello"))
    headers, data, trailers = client.reply(1)
    assert headers[":status"] == "200" and headers["content-type"] == "application/grpc"
    assert data == message(b"hello") and trailers == {"grpc-status": "0"}
    client.send(client.call(3, "/t/Refuse", b""))  # refused at its headers: trailers only, percent-encoded
    headers, data, trailers = client.reply(3)
    assert data == b"" and trailers["grpc-status"] == str(int(StatusCode.PERMISSION_DENIED))
    assert trailers["grpc-message"] == "refused: 100%25 sure"
    assert running.service.released == ["/t/Echo"]  # a refused call was never admitted


def test_header_blocks_decode_right_while_the_dynamic_table_changes(running: Running) -> None:
    """The same block bytes mean another header once the table has changed: the cache must not answer for it."""
    client = Client(running.port)
    answers = []
    for sid, value in ((1, "a"), (3, "a"), (5, "b"), (7, "b")):
        client.send(client.call(sid, "/t/Meta", b"", [("x-key", value), ("grpc-timeout", "5S")]))
        answers.append(ast.literal_eval(client.reply(sid)[1][5:].decode()))
    assert [("x-key", "a")] == answers[0][0] == answers[1][0]
    assert [("x-key", "b")] == answers[2][0] == answers[3][0]
    assert all(deadline for _, deadline in answers)  # grpc-timeout: a deadline


def test_garbage_instead_of_the_preface_is_goaway_and_the_server_serves_on(running: Running) -> None:
    sock = socket.create_connection(("127.0.0.1", running.port), timeout=5)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    assert bytes([GOAWAY]) in received and b"not an HTTP/2 preface" in received
    client = Client(running.port)
    client.send(client.call(1, "/t/Echo", b"still here"))
    assert client.reply(1)[1] == message(b"still here")


def test_a_header_block_past_the_bound_ends_the_connection(running: Running) -> None:
    client = Client(running.port)  # a block larger than --max-header-bytes, over CONTINUATION frames
    block = client.encoder.encode([(":method", "POST"), (":path", "/t/Echo"), ("x-big", "v" * 6000)], huffman=False)
    client.send(frame(HEADERS, 0, 1, block[:3000]), frame(CONTINUATION, 0, 1, block[3000:]))
    assert client.goaway() == 0xB  # ENHANCE_YOUR_CALM
    assert client.closed()
    small = Client(running.port)  # a small block that decodes past the bound: indexed copies of one big entry
    entry = small.encoder.encode([("x-big", "v" * 1000)])  # added to the dynamic table (index 62)
    small.send(frame(HEADERS, END_HEADERS, 1, entry + b"\xbe" * 10))
    assert small.goaway() == 0xB


def test_too_many_headers_is_resource_exhausted(running: Running) -> None:
    client = Client(running.port)
    client.send(client.call(1, "/t/Echo", b"", [(f"x-{i}", "v") for i in range(LIMITS.max_headers)]))
    assert client.reply(1)[2]["grpc-status"] == str(int(StatusCode.RESOURCE_EXHAUSTED))


def test_the_reply_waits_for_the_clients_window(running: Running) -> None:
    client = Client(running.port, struct.pack(">HL", 0x4, 16))  # SETTINGS_INITIAL_WINDOW_SIZE 16
    client.send(client.call(1, "/t/Echo", b"x" * 100))
    received = b""
    client.sock.settimeout(0.5)
    with pytest.raises(TimeoutError):
        while got := client.frame():
            assert got[0] != HEADERS or not got[1] & END_STREAM, "trailers sent past the window"
            received += got[3] if got[0] == DATA else b""
    assert len(received) == 16  # what the window allowed, no more
    client.sock.settimeout(5)
    client.send(frame(WINDOW_UPDATE, 0, 1, struct.pack(">L", 1000)))
    _, data, trailers = client.reply(1)
    assert received + data == message(b"x" * 100) and trailers == {"grpc-status": "0"}


def test_a_reply_the_client_never_opens_its_window_for_is_dropped(running: Running) -> None:
    client = Client(running.port, struct.pack(">HL", 0x4, 0))  # SETTINGS_INITIAL_WINDOW_SIZE 0, and no update
    client.send(client.call(1, "/t/Echo", b"held"))
    assert client.until(RST_STREAM) == (RST_STREAM, 0, 1, struct.pack(">L", 0x8))  # CANCEL, past --body-timeout
    assert running.service.released == ["/t/Echo"]


def test_a_long_error_message_fits_one_frame() -> None:
    block = status_block(StatusCode.INTERNAL, "é" * 4000)  # 8 bytes each once percent-encoded: cut to 8 KiB
    message_bytes = dict(Decoder().decode(block))["grpc-message"]
    assert len(message_bytes) <= 8192 and message_bytes.endswith("%A9") and len(block) < 16384


def test_a_message_past_the_limit_is_refused_from_its_prefix(running: Running) -> None:
    client = Client(running.port)
    prefix = b"\x00" + struct.pack(">L", LIMITS.max_message + 1)
    client.send(client.headers(1, "/t/Echo"), frame(DATA, 0, 1, prefix + b"x" * 10))  # the rest never sent
    trailers = client.reply(1)[2]
    assert trailers["grpc-status"] == str(int(StatusCode.RESOURCE_EXHAUSTED))
    assert trailers["grpc-message"] == f"Received message larger than max ({LIMITS.max_message + 1} vs. 1000)"
    assert client.until(RST_STREAM) == (RST_STREAM, 0, 1, b"\x00\x00\x00\x00")  # stop sending: NO_ERROR


HELLO = gzip.compress(b"hello", mtime=0)  # mtime=0: the same bytes in every process that collects the tests


def _compressed(body: bytes, flag: int = 1) -> bytes:
    return bytes([flag]) + struct.pack(">L", len(body)) + body


@pytest.mark.parametrize(
    ("sent", "status", "text"),
    [
        (HELLO, StatusCode.OK, ""),
        (HELLO[:-8], StatusCode.INVALID_ARGUMENT, "the gzip message is cut short"),  # no trailer
        (HELLO + b"more", StatusCode.INVALID_ARGUMENT, "the gzip message has bytes after its end"),
        (b"", StatusCode.INVALID_ARGUMENT, "the gzip message is cut short"),
        (b"not gzip at all", StatusCode.INVALID_ARGUMENT, "the gzip message does not decompress"),
        (gzip.compress(b"x" * 2000, mtime=0), StatusCode.RESOURCE_EXHAUSTED, "over 1000 bytes decompressed"),
    ],
    ids=["whole", "no trailer", "trailing bytes", "empty", "not gzip", "bomb"],
)
def test_a_compressed_message_is_served_only_whole(
    running: Running, sent: bytes, status: StatusCode, text: str
) -> None:
    """A gzip message cut short (a sync flush, a lost trailer) or followed by more inflates to something else than
    was sent: refused, never served as what it inflates to (tests from an adversarial review)."""
    client = Client(running.port)
    client.send(
        client.headers(1, "/t/Echo", [("grpc-encoding", "gzip")]), frame(DATA, END_STREAM, 1, _compressed(sent))
    )
    _, data, trailers = client.reply(1)
    assert trailers["grpc-status"] == str(int(status)), trailers
    assert text in trailers.get("grpc-message", "")
    if status == StatusCode.OK:
        assert data == message(b"hello")


def test_a_compressed_flag_other_than_0_or_1_is_refused(running: Running) -> None:
    client = Client(running.port)
    client.send(client.headers(1, "/t/Echo"), frame(DATA, END_STREAM, 1, _compressed(b"hello", flag=2)))
    trailers = client.reply(1)[2]
    assert trailers["grpc-status"] == str(int(StatusCode.INVALID_ARGUMENT))
    assert trailers["grpc-message"] == "compressed flag 2: 0 or 1"


def test_a_method_may_take_less_than_the_limit(running: Running) -> None:
    client = Client(running.port)
    client.send(client.call(1, "/t/Small", b"x" * 10))
    assert client.reply(1)[1] == message(b"x" * 10)
    client.send(client.call(3, "/t/Small", b"x" * 11))
    assert client.reply(3)[2]["grpc-message"] == "Received message larger than max (11 vs. 10)"


def test_abrupt_close_mid_message_and_mid_call_releases_the_calls(running: Running) -> None:
    client = Client(running.port)
    client.send(client.headers(1, "/t/Echo"), frame(DATA, 0, 1, message(b"cut short")[:7]))
    client.send(client.call(3, "/t/Wait", b""))
    time.sleep(0.2)
    client.sock.close()
    deadline = time.monotonic() + 5
    while len(running.service.released) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sorted(running.service.released) == ["/t/Echo", "/t/Wait"] and running.service.cancelled == ["/t/Wait"]


def test_streams_past_the_bound_are_refused(running: Running) -> None:
    client = Client(running.port)
    client.send(client.call(1, "/t/Wait", b""), client.call(3, "/t/Wait", b""), client.call(5, "/t/Echo", b""))
    assert client.until(RST_STREAM) == (RST_STREAM, 0, 5, struct.pack(">L", 0x7))  # REFUSED_STREAM


def test_rapid_reset_is_goaway(running: Running) -> None:
    client = Client(running.port)
    calls = [client.call(sid, "/t/Wait", b"") for sid in range(1, 2 * (LIMITS.resets_per_second + 2), 2)]
    client.send(*[call + frame(RST_STREAM, 0, 2 * i + 1, struct.pack(">L", 0x8)) for i, call in enumerate(calls)])
    assert client.goaway() == 0xB
    # Every call begun was released (cancelled before it ran), none left running past the GOAWAY.
    assert running.service.released == ["/t/Wait"] * (LIMITS.resets_per_second + 1)


def test_empty_frames_flood_is_goaway(running: Running) -> None:
    client = Client(running.port)
    client.send(client.headers(1, "/t/Echo"), *[frame(DATA, 0, 1)] * (LIMITS.empty_frames + 1))
    assert client.goaway() == 0xB


def test_a_peer_that_does_not_read_is_not_read_either(running: Running) -> None:
    """PINGs ask for an answer each: sent without reading, the server stops reading at its write buffer's bound."""
    client = Client(running.port, rcvbuf=4096)
    client.sock.settimeout(2)
    pings = frame(PING, 0, 0, b"12345678") * 4096
    sent = 0
    with pytest.raises(TimeoutError):
        while sent < 256 << 20:
            client.sock.sendall(pings)
            sent += len(pings)
    other = Client(running.port)  # served meanwhile
    other.send(other.call(1, "/t/Echo", b"ok"))
    assert other.reply(1)[1] == message(b"ok")


def test_slow_preface_slow_message_and_too_many_connections() -> None:
    """Past --max-connections the longest idle connection makes room; with none idle, the newcomer is refused."""
    for running in _serve(LIMITS):
        silent = socket.create_connection(("127.0.0.1", running.port), timeout=5)
        client = Client(running.port)
        client.send(client.headers(1, "/t/Echo"), frame(DATA, 0, 1, b"\x00"))  # then nothing
        trailers = client.reply(1)[2]
        assert trailers["grpc-status"] == str(int(StatusCode.DEADLINE_EXCEEDED))
        assert trailers["grpc-message"] == "request message not received within 0.5 s"
        assert silent.recv(65536) and _drained(silent)  # SETTINGS, then GOAWAY and the close
        held = [Client(running.port) for _ in range(LIMITS.max_connections - 1)]  # each with a call under way
        for busy in held:
            busy.send(busy.call(1, "/t/Wait", b""))
        time.sleep(0.2)
        newcomer = Client(running.port)  # the connection count is full: the idle one (client) makes room
        assert client.goaway() == 0x0 and client.closed()
        newcomer.send(newcomer.call(1, "/t/Echo", b"in"), newcomer.call(3, "/t/Wait", b""))
        assert newcomer.reply(1)[1] == message(b"in")
        refused = Client(running.port)  # none idle now: refused
        assert refused.goaway() == 0x7 and refused.closed()  # REFUSED_STREAM: retry elsewhere
        held[0].send(held[0].call(3, "/t/Echo", b"kept"))
        assert held[0].reply(3)[1] == message(b"kept")


def test_shutdown_answers_the_calls_under_way_and_refuses_new_streams(running: Running) -> None:
    client = Client(running.port)
    client.send(client.call(1, "/t/Slow", b"last"))
    time.sleep(0.1)
    stopping = asyncio.run_coroutine_threadsafe(running.server.stop(5.0), running.loop)
    got = client.until(GOAWAY)
    assert got is not None and struct.unpack(">LL", got[3][:8]) == (1, 0)  # last stream 1, NO_ERROR
    client.send(client.call(3, "/t/Echo", b"late"))  # past the GOAWAY: refused, never run
    frames = []
    while (got := client.frame()) is not None:  # until the server closes the connection
        frames.append(got)
    assert (DATA, 0, 1, message(b"last")) in frames
    assert (RST_STREAM, 0, 3, struct.pack(">L", 0x7)) in frames  # REFUSED_STREAM
    stopping.result(5)
    assert running.service.released == ["/t/Slow"]


def test_a_request_that_is_not_grpc_is_415(running: Running) -> None:
    client = Client(running.port)
    block = client.encoder.encode([(":method", "POST"), (":path", "/t/Echo"), ("content-type", "application/json")])
    client.send(frame(HEADERS, END_HEADERS | END_STREAM, 1, block))
    got = client.until(HEADERS)
    assert got is not None and dict(client.decoder.decode(got[3]))[":status"] == "415"


def _drained(sock: socket.socket) -> bool:
    while sock.recv(65536):
        pass
    return True


def test_calls_read_together_hold_their_own_size_not_the_largest(
    serve: Callable[..., ServerProcess], example_repo: Path
) -> None:
    """A real server: 24 one-row calls whose frames come in one read are all served. Each holds the largest
    message (--max-body-bytes) only until its message is whole, not until its task runs: held until then,
    the sixth call of the read was RESOURCE_EXHAUSTED (5 x 40,000 bytes reach the 200,000 bound)."""
    port = free_port()
    args = ["--grpc-port", str(port), "--max-inflight-bytes", "200000", "--max-body-bytes", "40000"]
    serve(str(example_repo), *args)
    request = pb.ModelInferRequest(model_name="iris")
    request.inputs.add(name="input", datatype="FP64", shape=[1, 2]).contents.fp64_contents.extend([1.4, 0.2])
    client = Client(port)
    sids = range(1, 48, 2)
    client.send(*[client.call(sid, "/inference.GRPCInferenceService/ModelInfer", request.SerializeToString())
                  for sid in sids])  # fmt: skip
    statuses = {}
    while len(statuses) < len(sids):
        got = client.frame()
        assert got is not None
        kind, flags, sid, payload = got
        if kind == HEADERS:
            fields = dict(client.decoder.decode(payload))
            if flags & END_STREAM:
                statuses[sid] = fields.get("grpc-status"), fields.get("grpc-message")
    assert set(statuses.values()) == {("0", None)}, statuses
