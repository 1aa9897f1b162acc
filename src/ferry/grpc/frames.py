"""HTTP/2's and gRPC's wire pieces for ``ferry.grpc.http2``: frame types and codes, the status codes, the limits,
the call a service sees, reply header blocks pre-encoded, and request header blocks decoded (``hpack``).
"""

from __future__ import annotations

import enum
import struct
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Protocol, cast
from urllib.parse import quote

from hpack import Decoder
from hpack.table import HeaderTable

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


@dataclass(frozen=True)
class Head:
    """What a request's header list says, read once per distinct block (``HeaderCache``)."""

    path: str
    metadata: list[tuple[str, str]]  # the headers left for the service: tokens, trace context (never changed)
    timeout: float | None  # grpc-timeout, in seconds
    encoding: str  # grpc-encoding
    refusal: GrpcError | int | None  # answered at once: a gRPC status, or an HTTP status for a request not gRPC


def read_head(headers: list[tuple[str, str]], max_headers: int) -> Head:
    if len(headers) > max_headers:
        return Head(
            "", [], None, "identity", GrpcError(StatusCode.RESOURCE_EXHAUSTED, f"more than {max_headers} headers")
        )
    method = path = content_type = ""
    encoding, metadata, timeout = "identity", [], None
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
        elif name == "grpc-encoding":
            encoding = value
        elif name not in ("te", "grpc-accept-encoding"):
            metadata.append((name, value))
    refusal = 415 if not content_type.startswith("application/grpc") else 405 if method != "POST" else None
    return Head(path, metadata, timeout, encoding, refusal)


class HeaderCache:
    """Decoded header blocks, each valid while the dynamic table is as it was when the block was decoded.

    A block that changes the table (an insertion or a size update) is never kept: decoding it again must
    change the table again. A block that does not is a function of its bytes and the table, so while the
    table's count of changes is unchanged, the same bytes decode to the same list. Clients send the same
    few blocks call after call: this skips Huffman decoding for them. Small blocks only, a few per connection.
    """

    LARGEST, ENTRIES = 1024, 16

    def __init__(self, max_header_bytes: int, max_headers: int) -> None:
        self.decoder = Decoder()
        self.decoder.header_table = self.table = CountedTable()
        self.decoder.max_header_list_size = max_header_bytes
        self.max_headers = max_headers
        self.blocks: dict[bytes, tuple[int, Head]] = {}

    def decode(self, block: bytes) -> Head:
        """Raises ``hpack``'s ``HPACKError`` for a block that does not decode, or decodes past the bound."""
        cached = self.blocks.get(block)
        generation = self.table.generation
        if cached is not None and cached[0] == generation:
            return cached[1]
        head = read_head(cast(list[tuple[str, str]], self.decoder.decode(block)), self.max_headers)  # (str: not raw)
        if self.table.generation == generation and len(block) <= self.LARGEST:
            if len(self.blocks) >= self.ENTRIES:
                self.blocks.clear()
            self.blocks[block] = (generation, head)
        return head


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
    largest: int = 0  # the largest message this call's method takes, if the service says (admit); else the limit's
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

    def received(self, call: Call) -> None:
        """The call's message is whole (``call.message``), before its ``handle`` task runs."""

    def handle(self, call: Call) -> Awaitable[bytes]:
        """The serialized reply to ``call.message``, or ``GrpcError``."""

    def release(self, call: Call) -> None:
        """The call has ended, however it ended (admitted calls only)."""


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    size = len(payload)
    return HEADER.pack(size >> 8, size & 0xFF, kind, flags, stream) + payload


def integer(value: int, prefix: int, first: int) -> bytes:
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


def literal(name: bytes, value: bytes) -> bytes:
    """A header as a literal never added to the dynamic table: the same bytes whatever the table holds."""
    return b"\x00" + integer(len(name), 7, 0) + name + integer(len(value), 7, 0) + value


STATUS_200 = b"\x88"  # :status 200, static table entry 8
CONTENT_TYPE = b"\x0f\x10" + integer(16, 7, 0) + b"application/grpc"  # literal, static name 31
REPLY_HEADERS = STATUS_200 + CONTENT_TYPE
TRAILERS_OK = literal(b"grpc-status", b"0")


MESSAGE_BYTES = 8192  # a grpc-message at most, encoded: trailers go in one HEADERS frame (16,384 bytes at least)


def status_block(code: StatusCode, message: str) -> bytes:
    block = literal(b"grpc-status", str(int(code)).encode())
    if message:
        encoded = quote(message[:4096], safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~").encode()  # gRPC's percent-encoding
        if len(encoded) > MESSAGE_BYTES:  # (the block must fit one frame: cut, never inside an escape)
            encoded = encoded[:MESSAGE_BYTES]
            cut = encoded.rfind(b"%", -2)
            encoded = encoded[:cut] if cut >= 0 else encoded
        block += literal(b"grpc-message", encoded)
    return block


def parse_timeout(value: str) -> float | None:
    """``grpc-timeout``: up to 8 digits and a unit; anything else is no deadline, as gRPC servers read it."""
    if 2 <= len(value) <= 9 and value[:-1].isdigit() and value[-1] in GRPC_TIMEOUT_UNITS:
        return int(value[:-1]) * GRPC_TIMEOUT_UNITS[value[-1]]
    return None
