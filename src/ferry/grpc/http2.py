"""gRPC unary calls on HTTP/2 (RFC 9113) as an asyncio Protocol: what a unary call needs, every peer's resource bounded.

A connection reads frames, decodes header blocks with ``hpack`` (its dynamic table is per connection, so
blocks are decoded in order, never cached), gathers each stream's one length-prefixed message, and runs
``Service.handle`` on it in a task. Replies are framed here: headers and trailers are pre-encoded HPACK
literals that never touch the peer's dynamic table, and DATA respects the peer's flow-control windows and
frame size. The bounds: a header list (``--max-header-bytes``, ``--max-headers``), a message (``--max-body-bytes``),
streams per connection, connections per worker (``--max-connections``), the time to send a preface, a
header block or a message, idle connections, and floods of resets, empty frames and unread control replies.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import struct
import time
import zlib
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, Protocol, cast
from urllib.parse import quote

from hpack import Decoder
from hpack.exceptions import HPACKError
from hpack.table import HeaderTable

logger = logging.getLogger("ferry.grpc")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, STREAM_CLOSED, FRAME_SIZE_ERROR = 0x0, 0x1, 0x3, 0x5, 0x6
REFUSED_STREAM, CANCEL, ENHANCE_YOUR_CALM = 0x7, 0x8, 0xB
SETTINGS_HEADER_TABLE_SIZE, SETTINGS_MAX_CONCURRENT_STREAMS, SETTINGS_INITIAL_WINDOW_SIZE = 0x1, 0x3, 0x4
SETTINGS_MAX_FRAME_SIZE, SETTINGS_MAX_HEADER_LIST_SIZE = 0x5, 0x6
DEFAULT_WINDOW = 65_535
MAX_WINDOW = 2**31 - 1
FRAME_SIZE = 16_384  # the largest frame this side reads, and the peer's until it says otherwise
HEADER = struct.Struct(">HBBBL")  # a frame header: length (24 bits as 16 + 8), type, flags, stream id
GRPC_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


_MAXSIZE: Any = vars(HeaderTable)["maxsize"]  # the property, its setter wrapped below


class CountedTable(HeaderTable):
    """HPACK's dynamic table, counting its changes: a block decoded at one count decodes the same at it again."""

    generation = 0

    def add(self, name: bytes, value: bytes) -> None:
        self.generation += 1
        super().add(name, value)

    def _resize(self, value: int) -> None:
        self.generation += 1
        _MAXSIZE.fset(self, value)

    maxsize = property(_MAXSIZE.fget, _resize)


class HeaderCache:
    """Decoded header blocks, each valid while the dynamic table is as it was when the block was decoded.

    A block that changes the table (an insertion or a size update) is never kept: decoding it again must
    change the table again. A block that does not is a function of its bytes and the table, so while the
    table's count of changes is unchanged, the same bytes decode to the same list. Clients send the same
    few blocks call after call: this skips Huffman decoding for them. Small blocks only, a few per connection.
    """

    LARGEST, ENTRIES = 1024, 16

    def __init__(self, max_header_bytes: int) -> None:
        self.decoder = Decoder()
        self.decoder.header_table = self.table = CountedTable()
        self.decoder.max_header_list_size = max_header_bytes
        self.blocks: dict[bytes, tuple[int, list[tuple[str, str]]]] = {}

    def decode(self, block: bytes) -> list[tuple[str, str]]:
        cached = self.blocks.get(block)
        generation = self.table.generation
        if cached is not None and cached[0] == generation:
            return cached[1]
        headers = cast(list[tuple[str, str]], self.decoder.decode(block))  # (str: not raw)
        if self.table.generation == generation and len(block) <= self.LARGEST:
            if len(self.blocks) >= self.ENTRIES:
                self.blocks.clear()
            self.blocks[block] = (generation, headers)
        return headers


class StatusCode(enum.IntEnum):
    """gRPC's status codes, by the names ``grpc.StatusCode`` gives them."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class GrpcError(Exception):
    """A call ends with this status and message (its trailers), raised by a service or by the framing."""

    def __init__(self, code: StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True)
class Limits:
    """What a peer may make one connection, or all of a worker's, hold."""

    max_message: int = 8 * 1024 * 1024  # one request message, after decompression (RESOURCE_EXHAUSTED past it)
    max_header_bytes: int = 64 * 1024  # a decoded header list, counted as HPACK does (name + value + 32 each)
    max_headers: int = 100
    max_streams: int = 100  # concurrent streams per connection (SETTINGS_MAX_CONCURRENT_STREAMS)
    max_connections: int = 2048  # per server; a connection past it is sent GOAWAY and closed
    header_timeout: float = 10.0  # to send the preface, and each header block once begun
    message_timeout: float = 30.0  # from a stream's headers to the end of its message
    idle_timeout: float = 300.0  # a connection with no stream open this long is sent GOAWAY
    resets_per_second: int = 200  # client RST_STREAMs (rapid reset) before ENHANCE_YOUR_CALM
    empty_frames: int = 1_000  # DATA or CONTINUATION frames carrying nothing, per connection
    # What a client may send before this side gives window back: it gives it back as it receives (a message is
    # bounded above, and admitted before it is read), so these only set the pace of a large message over a
    # long round trip: 1 MiB a round trip per stream.
    stream_window: int = 1 << 20
    connection_window: int = 8 << 20


@dataclass
class Call:
    """One unary call as the service sees it: the method, the metadata, the deadline, then the message."""

    method: str
    metadata: list[tuple[str, str]]
    deadline: float | None  # time.monotonic() by which the client wants its answer (grpc-timeout)
    message: bytes = b""
    held: int = 0  # what the service reserved for this call (admit), released when the call ends
    status: StatusCode | None = None

    def time_remaining(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return self.metadata

    def code(self) -> StatusCode | None:
        return self.status


class Service(Protocol):
    def admit(self, call: Call) -> None:
        """Called once a call's headers are read; raise ``GrpcError`` to refuse it before its message is."""

    def handle(self, call: Call) -> Awaitable[bytes]:
        """The serialized reply to ``call.message``, or ``GrpcError``."""

    def release(self, call: Call) -> None:
        """The call has ended, however it ended (admitted calls only)."""


class ConnectionError_(Exception):
    """The peer broke the protocol: GOAWAY with this code, then close."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    size = len(payload)
    return HEADER.pack(size >> 8, size & 0xFF, kind, flags, stream) + payload


def _integer(value: int, prefix: int, first: int) -> bytes:
    """HPACK's integer with an N-bit prefix (RFC 7541 5.1), ``first`` holding the bits above the prefix."""
    top = (1 << prefix) - 1
    if value < top:
        return bytes([first | value])
    out = bytearray([first | top])
    value -= top
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(name: bytes, value: bytes) -> bytes:
    """A header as a literal never added to the dynamic table: the same bytes whatever the table holds."""
    return b"\x00" + _integer(len(name), 7, 0) + name + _integer(len(value), 7, 0) + value


STATUS_200 = b"\x88"  # :status 200, static table entry 8
CONTENT_TYPE = b"\x0f\x10" + _integer(16, 7, 0) + b"application/grpc"  # literal, static name 31
REPLY_HEADERS = STATUS_200 + CONTENT_TYPE
TRAILERS_OK = _literal(b"grpc-status", b"0")


def _status_block(code: StatusCode, message: str) -> bytes:
    block = _literal(b"grpc-status", str(int(code)).encode())
    if message:
        encoded = quote(message[:4096], safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~").encode()  # gRPC's percent-encoding
        block += _literal(b"grpc-message", encoded)
    return block


def parse_timeout(value: str) -> float | None:
    """``grpc-timeout``: up to 8 digits and a unit; anything else is no deadline, as gRPC servers read it."""
    if 2 <= len(value) <= 9 and value[:-1].isdigit() and value[-1] in GRPC_TIMEOUT_UNITS:
        return int(value[:-1]) * GRPC_TIMEOUT_UNITS[value[-1]]
    return None


@dataclass(eq=False)
class Stream:
    id: int
    call: Call | None = None
    started: float = field(default_factory=time.monotonic)
    body: bytearray = field(default_factory=bytearray)
    expected: int = -1  # the message's length once its 5-byte prefix is read
    compressed: bool = False
    encoding: str = "identity"
    unacked: int = 0  # bytes received on this stream not yet given back by WINDOW_UPDATE
    send_window: int = DEFAULT_WINDOW
    pending: bytes = b""  # DATA waiting for window
    trailers: bytes = b""  # sent once ``pending`` is
    half_closed: bool = False  # the client has sent END_STREAM
    task: asyncio.Task[None] | None = None
    answered: bool = False


class GrpcConnection(asyncio.Protocol):
    """One client's HTTP/2 connection carrying unary gRPC calls."""

    def __init__(self, server: GrpcServer) -> None:
        self.server, self.limits, self.service = server, server.limits, server.service
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.preface = False
        self.headers = HeaderCache(self.limits.max_header_bytes)
        self.streams: dict[int, Stream] = {}
        self.last_stream = 0
        self.block: bytearray | None = None  # a header block awaiting CONTINUATION
        self.block_stream, self.block_end, self.block_started = 0, False, 0.0
        self.send_window = DEFAULT_WINDOW
        self.peer_window = DEFAULT_WINDOW  # the peer's SETTINGS_INITIAL_WINDOW_SIZE
        self.peer_frame = FRAME_SIZE
        self.unacked = 0  # connection-level bytes received not yet given back
        self.opened = self.idle_since = time.monotonic()
        self.resets, self.resets_since, self.empty = 0, self.opened, 0
        self.going_away = False
        self.closed = False
        self.out: list[bytes] = []  # frames gathered while reading one segment, written at once

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # (uvloop's is not a subclass)
        if not self.server.accept(self):
            transport.write(_frame(SETTINGS, 0, 0) + self._goaway_frame(REFUSED_STREAM, b"too many connections"))
            transport.close()
            self.closed = True
            return
        limits = self.limits
        settings = struct.pack(
            ">HLHLHLHL",
            SETTINGS_MAX_CONCURRENT_STREAMS,
            limits.max_streams,
            SETTINGS_INITIAL_WINDOW_SIZE,
            limits.stream_window,
            SETTINGS_MAX_HEADER_LIST_SIZE,
            limits.max_header_bytes,
            SETTINGS_MAX_FRAME_SIZE,
            FRAME_SIZE,
        )
        update = struct.pack(">L", limits.connection_window - DEFAULT_WINDOW)
        transport.write(_frame(SETTINGS, 0, 0, settings) + _frame(WINDOW_UPDATE, 0, 0, update))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.forget(self)
        for stream in list(self.streams.values()):
            self._drop(stream)

    def pause_writing(self) -> None:
        # The peer does not read what it is sent (replies, PING and SETTINGS acknowledgements): read no more
        # from it until it does, so a flood of frames that each ask for an answer is bounded by the socket.
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        try:
            if not self.preface:
                if len(buffer) < len(PREFACE):
                    if not PREFACE.startswith(buffer):
                        raise ConnectionError_(PROTOCOL_ERROR, "not an HTTP/2 preface")
                    self.buffer = buffer
                    return
                if not buffer.startswith(PREFACE):
                    raise ConnectionError_(PROTOCOL_ERROR, "not an HTTP/2 preface")
                self.preface = True
                buffer = buffer[len(PREFACE) :]
                if len(buffer) >= 9 and buffer[3] != SETTINGS:
                    raise ConnectionError_(PROTOCOL_ERROR, "the preface is not followed by SETTINGS")
            position, end = 0, len(buffer)
            while end - position >= 9:
                high, low, kind, flags, stream = HEADER.unpack_from(buffer, position)
                size = (high << 8) | low
                if size > FRAME_SIZE:
                    raise ConnectionError_(FRAME_SIZE_ERROR, f"a frame of {size} bytes")
                if end - position - 9 < size:
                    break
                payload = buffer[position + 9 : position + 9 + size]
                position += 9 + size
                self._frame_received(kind, flags, stream & 0x7FFFFFFF, payload)
            self.buffer = buffer[position:]
        except ConnectionError_ as exc:
            self._fail(exc.code, str(exc))
        self._flush()

    # -- frames in

    def _frame_received(self, kind: int, flags: int, stream: int, payload: bytes) -> None:
        if self.block is not None and (kind != CONTINUATION or stream != self.block_stream):
            raise ConnectionError_(PROTOCOL_ERROR, "a header block interrupted")
        if kind == DATA:
            self._data(flags, stream, payload)
        elif kind == HEADERS:
            self._headers(flags, stream, payload)
        elif kind == CONTINUATION:
            self._continuation(flags, stream, payload)
        elif kind == SETTINGS:
            self._settings(flags, stream, payload)
        elif kind == WINDOW_UPDATE:
            self._window_update(stream, payload)
        elif kind == PING:
            if stream or len(payload) != 8:
                raise ConnectionError_(PROTOCOL_ERROR if stream else FRAME_SIZE_ERROR, "a malformed PING")
            if not flags & ACK:
                self.out.append(_frame(PING, ACK, 0, payload))
        elif kind == RST_STREAM:
            self._reset(stream, payload)
        elif kind == GOAWAY:
            self.going_away = True
            if not self.streams and self.transport is not None:
                self.transport.close()
        elif kind == PUSH_PROMISE:
            raise ConnectionError_(PROTOCOL_ERROR, "a client sent PUSH_PROMISE")
        elif kind == PRIORITY and (not stream or len(payload) != 5):
            raise ConnectionError_(PROTOCOL_ERROR, "a malformed PRIORITY")
        # Other frame types (and PRIORITY) are ignored, as RFC 9113 asks.

    def _headers(self, flags: int, stream: int, payload: bytes) -> None:
        if not stream or not stream & 1:
            raise ConnectionError_(PROTOCOL_ERROR, f"HEADERS on stream {stream}")
        start, end = 0, len(payload)
        if flags & PADDED:
            if not payload:
                raise ConnectionError_(PROTOCOL_ERROR, "padding longer than its frame")
            start, end = 1, end - payload[0]
        if flags & PRIORITY_FLAG:
            start += 5
        if start > end:
            raise ConnectionError_(PROTOCOL_ERROR, "padding longer than its frame")
        fragment = payload[start:end]
        if flags & END_HEADERS:
            self._block_received(stream, fragment, bool(flags & END_STREAM))
        else:
            self.block, self.block_stream = bytearray(fragment), stream
            self.block_end, self.block_started = bool(flags & END_STREAM), time.monotonic()
            self._check_block()

    def _continuation(self, flags: int, stream: int, payload: bytes) -> None:
        if self.block is None:
            raise ConnectionError_(PROTOCOL_ERROR, "CONTINUATION without HEADERS")
        if not payload and not flags & END_HEADERS:
            self._empty_frame()
        self.block += payload
        self._check_block()
        if flags & END_HEADERS:
            block, self.block = bytes(self.block), None
            self._block_received(stream, block, self.block_end)

    def _check_block(self) -> None:
        # An encoded block is never larger than the list it decodes to (plus HPACK's 32 bytes a field):
        # one past the header list bound is refused before it is all held (the CONTINUATION flood).
        assert self.block is not None
        if len(self.block) > self.limits.max_header_bytes:
            raise ConnectionError_(ENHANCE_YOUR_CALM, "a header block past the header list bound")

    def _block_received(self, sid: int, block: bytes, end_stream: bool) -> None:
        try:
            headers = self.headers.decode(block)  # every block, in order: the dynamic table is the connection's
        except HPACKError as exc:  # a list past the bound too: the table may be out of step, so the connection ends
            raise ConnectionError_(
                PROTOCOL_ERROR if "Oversized" not in type(exc).__name__ else ENHANCE_YOUR_CALM, str(exc)
            ) from None
        stream = self.streams.get(sid)
        if stream is not None:  # trailers from the client: they end its side
            if not end_stream:
                raise ConnectionError_(PROTOCOL_ERROR, "a second header block that does not end the stream")
            self._end_of_message(stream)
            return
        if sid <= self.last_stream:
            raise ConnectionError_(STREAM_CLOSED, f"HEADERS on closed stream {sid}")
        self.last_stream = sid
        if self.going_away:
            self._send_reset(sid, REFUSED_STREAM)
            return
        if len(self.streams) >= self.limits.max_streams:
            self._send_reset(sid, REFUSED_STREAM)
            return
        stream = Stream(sid, send_window=self.peer_window)
        self.streams[sid] = stream
        try:
            stream.call = self._call(stream, headers)
        except GrpcError as exc:
            self._answer(stream, exc.code, exc.message)
            return
        except _HttpStatus as exc:
            self._answer_http(stream, exc.status)
            return
        try:
            self.service.admit(stream.call)
        except GrpcError as exc:
            stream.call = None
            self._answer(stream, exc.code, exc.message)
            return
        if end_stream:
            self._end_of_message(stream)

    def _call(self, stream: Stream, headers: list[tuple[str, str]]) -> Call:
        if len(headers) > self.limits.max_headers:
            raise GrpcError(StatusCode.RESOURCE_EXHAUSTED, f"more than {self.limits.max_headers} headers")
        method = path = content_type = ""
        metadata, deadline = [], None
        for name, value in headers:
            if name[0] == ":":
                if name == ":method":
                    method = value
                elif name == ":path":
                    path = value
            elif name == "content-type":
                content_type = value
            elif name == "grpc-timeout":
                timeout = parse_timeout(value)
                deadline = None if timeout is None else time.monotonic() + timeout
            elif name == "grpc-encoding":
                stream.encoding = value
            elif name not in ("te", "grpc-accept-encoding"):
                metadata.append((name, value))
        if not content_type.startswith("application/grpc"):
            raise _HttpStatus(415)
        if method != "POST":
            raise _HttpStatus(405)
        return Call(path, metadata, deadline)

    def _data(self, flags: int, sid: int, payload: bytes) -> None:
        if not sid:
            raise ConnectionError_(PROTOCOL_ERROR, "DATA on stream 0")
        size = len(payload)
        self.unacked += size
        if self.unacked >= self.limits.connection_window // 2:
            self.out.append(_frame(WINDOW_UPDATE, 0, 0, struct.pack(">L", self.unacked)))
            self.unacked = 0
        stream = self.streams.get(sid)
        if stream is None or stream.half_closed:
            if sid > self.last_stream:
                raise ConnectionError_(PROTOCOL_ERROR, f"DATA on idle stream {sid}")
            return  # a stream this side has answered and reset: its late DATA counts for the connection only
        if not size and not flags & END_STREAM:
            self._empty_frame()
        if flags & PADDED:
            if not size or payload[0] >= size:
                raise ConnectionError_(PROTOCOL_ERROR, "padding longer than its frame")
            payload = payload[1 : size - payload[0]]
        if stream.call is not None and not stream.answered:
            stream.body += payload
            body = stream.body
            if stream.expected < 0 and len(body) >= 5:
                stream.compressed, stream.expected = bool(body[0]), int.from_bytes(body[1:5], "big")
                if stream.expected > self.limits.max_message:
                    self._answer(stream, StatusCode.RESOURCE_EXHAUSTED, _too_large(stream.expected, self.limits))
                    return
            if stream.expected >= 0 and len(body) > 5 + stream.expected:
                self._answer(stream, StatusCode.INVALID_ARGUMENT, "more than one request message in a unary call")
                return
        if flags & END_STREAM:
            self._end_of_message(stream)
        elif size:
            stream.unacked += size
            if stream.unacked >= self.limits.stream_window // 2:
                self.out.append(_frame(WINDOW_UPDATE, 0, sid, struct.pack(">L", stream.unacked)))
                stream.unacked = 0

    def _end_of_message(self, stream: Stream) -> None:
        stream.half_closed = True
        call = stream.call
        if call is None or stream.answered:
            if stream.answered and not stream.pending and not stream.trailers:
                self._close_stream(stream)
            return
        body = stream.body
        if len(body) < 5 or len(body) != 5 + stream.expected:
            self._answer(stream, StatusCode.INVALID_ARGUMENT, "the request message is missing or cut short")
            return
        message = bytes(body[5:]) if len(body) > 5 else b""
        stream.body = bytearray()
        if stream.compressed:
            try:
                message = self._inflate(stream.encoding, message)
            except GrpcError as exc:
                self._answer(stream, exc.code, exc.message)
                return
        call.message = message
        stream.task = asyncio.get_running_loop().create_task(self._run(stream, call))

    def _inflate(self, encoding: str, message: bytes) -> bytes:
        if encoding not in ("gzip", "deflate"):
            raise GrpcError(StatusCode.UNIMPLEMENTED, f"compression {encoding!r} is not supported; use gzip or deflate")
        inflater = zlib.decompressobj(31 if encoding == "gzip" else 15)
        try:
            out = inflater.decompress(message, self.limits.max_message + 1)
        except zlib.error as exc:
            raise GrpcError(StatusCode.INTERNAL, f"the {encoding} message does not decompress: {exc}") from None
        if len(out) > self.limits.max_message:
            raise GrpcError(StatusCode.RESOURCE_EXHAUSTED, _too_large(len(out), self.limits))
        return out

    def _settings(self, flags: int, stream: int, payload: bytes) -> None:
        if stream:
            raise ConnectionError_(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise ConnectionError_(FRAME_SIZE_ERROR, "a SETTINGS acknowledgement with a payload")
            return
        if len(payload) % 6:
            raise ConnectionError_(FRAME_SIZE_ERROR, "SETTINGS not a multiple of 6 bytes")
        for offset in range(0, len(payload), 6):
            key, value = struct.unpack_from(">HL", payload, offset)
            if key == SETTINGS_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ConnectionError_(FLOW_CONTROL_ERROR, "an initial window past 2^31-1")
                delta, self.peer_window = value - self.peer_window, value
                for open_stream in self.streams.values():
                    open_stream.send_window += delta
            elif key == SETTINGS_MAX_FRAME_SIZE:
                if not FRAME_SIZE <= value <= 2**24 - 1:
                    raise ConnectionError_(PROTOCOL_ERROR, "a max frame size out of range")
                self.peer_frame = value
            # Header table size: replies never use the peer's dynamic table, so any size suits them.
        self.out.append(_frame(SETTINGS, ACK, 0))
        self._send_pending()

    def _window_update(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ConnectionError_(FRAME_SIZE_ERROR, "a WINDOW_UPDATE not of 4 bytes")
        increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if not sid:
            if not increment:
                raise ConnectionError_(PROTOCOL_ERROR, "a WINDOW_UPDATE of 0")
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                raise ConnectionError_(FLOW_CONTROL_ERROR, "the connection window past 2^31-1")
            self._send_pending()
            return
        stream = self.streams.get(sid)
        if stream is None:
            return
        if not increment or stream.send_window + increment > MAX_WINDOW:
            self._drop(stream)
            self._send_reset(sid, PROTOCOL_ERROR if not increment else FLOW_CONTROL_ERROR)
            return
        stream.send_window += increment
        self._send_pending()

    def _reset(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ConnectionError_(FRAME_SIZE_ERROR, "an RST_STREAM not of 4 bytes")
        if not sid or sid > self.last_stream:
            raise ConnectionError_(PROTOCOL_ERROR, f"RST_STREAM on idle stream {sid}")
        now = time.monotonic()
        if now - self.resets_since >= 1.0:
            self.resets, self.resets_since = 0, now
        self.resets += 1
        if self.resets > self.limits.resets_per_second:
            raise ConnectionError_(ENHANCE_YOUR_CALM, "too many streams reset")
        stream = self.streams.get(sid)
        if stream is not None:
            self._drop(stream)

    def _empty_frame(self) -> None:
        self.empty += 1
        if self.empty > self.limits.empty_frames:
            raise ConnectionError_(ENHANCE_YOUR_CALM, "too many empty frames")

    # -- calls

    async def _run(self, stream: Stream, call: Call) -> None:
        try:
            reply = await self.service.handle(call)
        except GrpcError as exc:
            self._answer(stream, exc.code, exc.message)
        except asyncio.CancelledError:  # the client reset the stream, or the connection closed
            return
        except Exception:  # a service raises GrpcError: anything else is a bug, answered without its text
            logger.exception("gRPC call %s failed", call.method)
            self._answer(stream, StatusCode.UNKNOWN, "unexpected error")
        else:
            if len(reply) > self.limits.max_message:
                self._answer(
                    stream,
                    StatusCode.RESOURCE_EXHAUSTED,
                    f"reply of {len(reply)} bytes past the limit of {self.limits.max_message}",
                )
            else:
                call.status = StatusCode.OK
                self._reply(stream, reply)
        finally:
            stream.task = None
        self._flush()

    def _reply(self, stream: Stream, reply: bytes) -> None:
        if self.closed or stream.id not in self.streams:
            return
        stream.answered = True
        data = b"\x00" + len(reply).to_bytes(4, "big") + reply
        self.out.append(_frame(HEADERS, END_HEADERS, stream.id, REPLY_HEADERS))
        stream.pending, stream.trailers = data, _frame(HEADERS, END_HEADERS | END_STREAM, stream.id, TRAILERS_OK)
        self._send_stream(stream)

    def _answer(self, stream: Stream, code: StatusCode, message: str) -> None:
        """A trailers-only reply: the status alone, in one HEADERS frame that ends the stream."""
        if self.closed or stream.id not in self.streams or stream.answered:
            return
        if stream.call is not None:
            stream.call.status = code
        stream.answered = True
        block = REPLY_HEADERS + _status_block(code, message)
        self.out.append(_frame(HEADERS, END_HEADERS | END_STREAM, stream.id, block))
        self._finish(stream)

    def _answer_http(self, stream: Stream, status: int) -> None:
        block = _integer(8, 4, 0) + _integer(3, 7, 0) + str(status).encode()  # :status (static name 8), not indexed
        stream.answered = True
        self.out.append(_frame(HEADERS, END_HEADERS | END_STREAM, stream.id, block))
        self._finish(stream)

    def _send_stream(self, stream: Stream) -> None:
        """Send what the windows allow of a reply's DATA, then its trailers once all is sent."""
        data = stream.pending
        while data:
            room = min(self.send_window, stream.send_window, self.peer_frame)
            if room <= 0:
                break
            chunk, data = data[:room], data[room:]
            self.out.append(_frame(DATA, 0, stream.id, chunk))
            self.send_window -= len(chunk)
            stream.send_window -= len(chunk)
        stream.pending = data
        if not data and stream.trailers:
            self.out.append(stream.trailers)
            stream.trailers = b""
            self._finish(stream)

    def _send_pending(self) -> None:
        for stream in list(self.streams.values()):
            if stream.pending and self.send_window > 0:
                self._send_stream(stream)

    def _finish(self, stream: Stream) -> None:
        """The reply is all sent: a client still sending is told to stop (RST_STREAM NO_ERROR, RFC 9113 8.1)."""
        if not stream.half_closed:
            self.out.append(_frame(RST_STREAM, 0, stream.id, struct.pack(">L", NO_ERROR)))
        self._close_stream(stream)

    def _close_stream(self, stream: Stream) -> None:
        if self.streams.pop(stream.id, None) is None:
            return
        if stream.call is not None:
            self.service.release(stream.call)
            stream.call = None
        if not self.streams:
            self.idle_since = time.monotonic()
            if self.going_away and self.transport is not None:
                self._flush()
                self.transport.close()
                self.server.stream_closed()

    def _drop(self, stream: Stream) -> None:
        """The stream ends unanswered (reset by the client, or the connection is lost): its call is cancelled."""
        if stream.task is not None:
            stream.task.cancel()
            stream.task = None
        stream.answered = True
        self._close_stream(stream)

    def _send_reset(self, sid: int, code: int) -> None:
        self.out.append(_frame(RST_STREAM, 0, sid, struct.pack(">L", code)))

    # -- the connection

    def _goaway_frame(self, code: int, reason: bytes = b"") -> bytes:
        return _frame(GOAWAY, 0, 0, struct.pack(">LL", self.last_stream, code) + reason)

    def _fail(self, code: int, reason: str) -> None:
        logger.debug("gRPC connection closed: %s", reason)
        self.out.append(self._goaway_frame(code, reason.encode()[:256]))
        self._flush()
        if self.transport is not None:
            self.transport.close()
        self.closed = True
        for stream in list(self.streams.values()):
            self._drop(stream)

    def go_away(self) -> None:
        """Shut down: no new streams (GOAWAY NO_ERROR); the connection closes once its calls are answered."""
        if self.closed or self.going_away:
            return
        self.going_away = True
        self.out.append(self._goaway_frame(NO_ERROR))
        self._flush()
        if not self.streams and self.transport is not None:
            self.transport.close()

    def sweep(self, now: float) -> None:
        """The server's periodic visit: a preface, header block or message too slow, or a connection idle too long."""
        limits = self.limits
        if not self.preface and now - self.opened > limits.header_timeout:
            self._fail(PROTOCOL_ERROR, "no preface within the header timeout")
            return
        if self.block is not None and now - self.block_started > limits.header_timeout:
            self._fail(ENHANCE_YOUR_CALM, "a header block not finished within the header timeout")
            return
        for stream in list(self.streams.values()):
            if not stream.half_closed and not stream.answered and now - stream.started > limits.message_timeout:
                self._answer(
                    stream,
                    StatusCode.DEADLINE_EXCEEDED,
                    f"request message not received within {limits.message_timeout:g} s",
                )
        if not self.streams and now - self.idle_since > limits.idle_timeout:
            self.go_away()
        self._flush()

    def _flush(self) -> None:
        if self.out:
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write(b"".join(self.out))
            self.out.clear()


class _HttpStatus(Exception):
    """A request that is not gRPC at all: answered with this HTTP status alone (415 for its content type)."""

    def __init__(self, status: int) -> None:
        self.status = status


def _too_large(size: int, limits: Limits) -> str:
    return f"Received message larger than max ({size} vs. {limits.max_message})"


class GrpcServer:
    """The listening side: the connections, their count bound, the sweep, and the drain on shutdown."""

    def __init__(self, service: Service, limits: Limits) -> None:
        self.service, self.limits = service, limits
        self.connections: set[GrpcConnection] = set()
        self.server: asyncio.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._drained: asyncio.Event | None = None  # set once no call is under way, while stopping

    async def start(self, host: str, port: int, reuse_port: bool = False) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: GrpcConnection(self), host, port, reuse_port=reuse_port or None, backlog=2048
        )
        self._sweeper = loop.call_later(1.0, self._sweep)

    def accept(self, connection: GrpcConnection) -> bool:
        if len(self.connections) >= self.limits.max_connections:
            return False
        self.connections.add(connection)
        return True

    def forget(self, connection: GrpcConnection) -> None:
        self.connections.discard(connection)

    def _sweep(self) -> None:
        now = time.monotonic()
        for connection in list(self.connections):
            connection.sweep(now)
        self._sweeper = asyncio.get_running_loop().call_later(1.0, self._sweep)

    async def stop(self, grace: float) -> None:
        """Shut down in steps, as the HTTP side does."""
        # 1. Stop accepting connections.
        if self.server is not None:
            self.server.close()
        # 2. GOAWAY to every connection: no new streams; each closes once its calls are answered.
        self._drained = asyncio.Event()
        for connection in list(self.connections):
            connection.go_away()
        self.stream_closed()
        # 3. Wait for the calls under way, within ``grace``; then close whatever is left.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drained.wait(), grace)
        if self._sweeper is not None:
            self._sweeper.cancel()
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.close()
            connection.connection_lost(None)

    def stream_closed(self) -> None:
        if self._drained is not None and not any(c.streams for c in self.connections):
            self._drained.set()
