"""gRPC unary calls on HTTP/2 (RFC 9113) as an asyncio Protocol: what a unary call needs, every peer's resource bounded.

A connection reads frames, decodes header blocks with ``hpack`` (in order: the dynamic table is the
connection's; ``frames.HeaderCache`` skips decoding a block it has seen while the table is unchanged),
gathers each stream's one length-prefixed message, and runs ``Service.handle`` on it in a task. Replies are
framed here: headers and trailers are pre-encoded HPACK literals that never touch the peer's dynamic table,
and DATA respects the peer's flow-control windows and frame size. The bounds: a header list
(``--max-header-bytes``, ``--max-headers``), a message (``--max-body-bytes``), streams per connection,
connections per worker (``--max-connections``), the time to send a preface, a header block or a message,
idle connections, and floods of resets, empty frames and unread control replies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import time
import zlib
from typing import cast

from hpack.exceptions import HPACKError

from ferry.grpc.frames import (
    ACK,
    CANCEL,
    CONTINUATION,
    DATA,
    DEFAULT_WINDOW,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE,
    FRAME_SIZE_ERROR,
    GOAWAY,
    HEADER,
    HEADERS,
    MAX_WINDOW,
    NO_ERROR,
    PADDED,
    PING,
    PREFACE,
    PRIORITY,
    PRIORITY_FLAG,
    PROTOCOL_ERROR,
    PUSH_PROMISE,
    REFUSED_STREAM,
    REPLY_HEADERS,
    RST_STREAM,
    SETTINGS,
    SETTINGS_INITIAL_WINDOW_SIZE,
    SETTINGS_MAX_CONCURRENT_STREAMS,
    SETTINGS_MAX_FRAME_SIZE,
    SETTINGS_MAX_HEADER_LIST_SIZE,
    STREAM_CLOSED,
    TRAILERS_OK,
    WINDOW_UPDATE,
    Call,
    GrpcError,
    HeaderCache,
    Limits,
    Service,
    StatusCode,
    frame,
    integer,
    status_block,
)

logger = logging.getLogger("ferry.grpc")


class ProtocolViolation(Exception):
    """The peer broke the protocol: GOAWAY with this code, then close."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


class Stream:
    """One stream's state: its call, the message as it arrives, and the reply as the windows let it out."""

    __slots__ = (
        "answered",
        "body",
        "call",
        "compressed",
        "encoding",
        "expected",
        "half_closed",
        "id",
        "offset",
        "pending",
        "progress",
        "send_window",
        "started",
        "task",
        "trailers",
        "unacked",
    )  # fmt: skip

    def __init__(self, sid: int, send_window: int, started: float) -> None:
        self.id = sid
        self.call: Call | None = None
        self.started = started
        self.body: bytes | bytearray = (
            b""  # the message so far, prefix included (bytes: most messages come in one DATA frame)
        )
        self.expected = -1  # the message's length once its 5-byte prefix is read
        self.compressed = False
        self.encoding = "identity"
        self.unacked = 0  # bytes received on this stream not yet given back by WINDOW_UPDATE
        self.send_window = send_window
        self.pending = b""  # reply DATA, sent from ``offset`` on as the windows allow
        self.offset = 0
        self.progress = started  # when the reply last moved (a client that never opens its window is dropped)
        self.trailers = b""  # sent once ``pending`` is
        self.half_closed = False  # the client has sent END_STREAM
        self.task: asyncio.Task[None] | None = None
        self.answered = False


class GrpcConnection(asyncio.Protocol):
    """One client's HTTP/2 connection carrying unary gRPC calls."""

    def __init__(self, server: GrpcServer) -> None:
        self.server, self.limits, self.service = server, server.limits, server.service
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.preface = False
        self.headers = HeaderCache(self.limits.max_header_bytes, self.limits.max_headers)
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
            transport.write(frame(SETTINGS, 0, 0) + self._goaway_frame(REFUSED_STREAM, b"too many connections"))
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
        transport.write(frame(SETTINGS, 0, 0, settings) + frame(WINDOW_UPDATE, 0, 0, update))

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
        if self.closed:
            return
        buffer = self.buffer + data if self.buffer else data
        try:
            if not self.preface:
                if len(buffer) < len(PREFACE):
                    if not PREFACE.startswith(buffer):
                        raise ProtocolViolation(PROTOCOL_ERROR, "not an HTTP/2 preface")
                    self.buffer = buffer
                    return
                if not buffer.startswith(PREFACE):
                    raise ProtocolViolation(PROTOCOL_ERROR, "not an HTTP/2 preface")
                self.preface = True
                buffer = buffer[len(PREFACE) :]
                if len(buffer) >= 9 and buffer[3] != SETTINGS:
                    raise ProtocolViolation(PROTOCOL_ERROR, "the preface is not followed by SETTINGS")
            position, end = 0, len(buffer)
            while end - position >= 9:
                high, low, kind, flags, stream = HEADER.unpack_from(buffer, position)
                size = (high << 8) | low
                if size > FRAME_SIZE:
                    raise ProtocolViolation(FRAME_SIZE_ERROR, f"a frame of {size} bytes")
                if end - position - 9 < size:
                    break
                payload = buffer[position + 9 : position + 9 + size]
                position += 9 + size
                self._frame_received(kind, flags, stream & 0x7FFFFFFF, payload)
            self.buffer = buffer[position:]
        except ProtocolViolation as exc:
            self._fail(exc.code, str(exc))
        self._flush()

    # -- frames in

    def _frame_received(self, kind: int, flags: int, stream: int, payload: bytes) -> None:
        if self.block is not None and (kind != CONTINUATION or stream != self.block_stream):
            raise ProtocolViolation(PROTOCOL_ERROR, "a header block interrupted")
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
                raise ProtocolViolation(PROTOCOL_ERROR if stream else FRAME_SIZE_ERROR, "a malformed PING")
            if not flags & ACK:
                self.out.append(frame(PING, ACK, 0, payload))
        elif kind == RST_STREAM:
            self._reset(stream, payload)
        elif kind == GOAWAY:
            self.going_away = True
            if not self.streams and self.transport is not None:
                self.transport.close()
        elif kind == PUSH_PROMISE:
            raise ProtocolViolation(PROTOCOL_ERROR, "a client sent PUSH_PROMISE")
        elif kind == PRIORITY and (not stream or len(payload) != 5):
            raise ProtocolViolation(PROTOCOL_ERROR, "a malformed PRIORITY")
        # Other frame types (and PRIORITY) are ignored, as RFC 9113 asks.

    def _headers(self, flags: int, stream: int, payload: bytes) -> None:
        if not stream or not stream & 1:
            raise ProtocolViolation(PROTOCOL_ERROR, f"HEADERS on stream {stream}")
        start, end = 0, len(payload)
        if flags & PADDED:
            if not payload:
                raise ProtocolViolation(PROTOCOL_ERROR, "padding longer than its frame")
            start, end = 1, end - payload[0]
        if flags & PRIORITY_FLAG:
            start += 5
        if start > end:
            raise ProtocolViolation(PROTOCOL_ERROR, "padding longer than its frame")
        fragment = payload[start:end]
        if flags & END_HEADERS:
            self._block_received(stream, fragment, bool(flags & END_STREAM))
        else:
            self.block, self.block_stream = bytearray(fragment), stream
            self.block_end, self.block_started = bool(flags & END_STREAM), time.monotonic()
            self._check_block()

    def _continuation(self, flags: int, stream: int, payload: bytes) -> None:
        if self.block is None:
            raise ProtocolViolation(PROTOCOL_ERROR, "CONTINUATION without HEADERS")
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
            raise ProtocolViolation(ENHANCE_YOUR_CALM, "a header block past the header list bound")

    def _block_received(self, sid: int, block: bytes, end_stream: bool) -> None:
        try:
            head = self.headers.decode(block)  # every block, in order: the dynamic table is the connection's
        except HPACKError as exc:  # a list past the bound too: the table may be out of step, so the connection ends
            raise ProtocolViolation(
                PROTOCOL_ERROR if "Oversized" not in type(exc).__name__ else ENHANCE_YOUR_CALM, str(exc)
            ) from None
        stream = self.streams.get(sid)
        if stream is not None:  # trailers from the client: they end its side
            if not end_stream:
                raise ProtocolViolation(PROTOCOL_ERROR, "a second header block that does not end the stream")
            self._end_of_message(stream)
            return
        if sid <= self.last_stream:
            raise ProtocolViolation(STREAM_CLOSED, f"HEADERS on closed stream {sid}")
        self.last_stream = sid
        if self.going_away or len(self.streams) >= self.limits.max_streams:
            self._send_reset(sid, REFUSED_STREAM)
            return
        now = time.monotonic()
        stream = self.streams[sid] = Stream(sid, self.peer_window, now)
        refusal = head.refusal
        if refusal is not None:
            if isinstance(refusal, GrpcError):
                self._answer(stream, refusal.code, refusal.message)
            else:
                self._answer_http(stream, refusal)
            return
        stream.encoding = head.encoding
        call = Call(head.path, head.metadata, None if head.timeout is None else now + head.timeout)
        try:
            self.service.admit(call)
        except GrpcError as exc:
            self._answer(stream, exc.code, exc.message)
            return
        stream.call = call
        if end_stream:
            self._end_of_message(stream)

    def _data(self, flags: int, sid: int, payload: bytes) -> None:
        if not sid:
            raise ProtocolViolation(PROTOCOL_ERROR, "DATA on stream 0")
        size = len(payload)
        self.unacked += size
        if self.unacked >= self.limits.connection_window // 2:
            self.out.append(frame(WINDOW_UPDATE, 0, 0, struct.pack(">L", self.unacked)))
            self.unacked = 0
        stream = self.streams.get(sid)
        if stream is None or stream.half_closed:
            if sid > self.last_stream:
                raise ProtocolViolation(PROTOCOL_ERROR, f"DATA on idle stream {sid}")
            return  # a stream this side has answered and reset: its late DATA counts for the connection only
        if not size and not flags & END_STREAM:
            self._empty_frame()
        if flags & PADDED:
            if not size or payload[0] >= size:
                raise ProtocolViolation(PROTOCOL_ERROR, "padding longer than its frame")
            payload = payload[1 : size - payload[0]]
        if stream.call is not None and not stream.answered:
            body: bytes | bytearray = stream.body
            if not body:
                stream.body = body = payload
            else:
                if isinstance(body, bytes):  # a message over several frames: gathered in place
                    stream.body = body = bytearray(body)
                body += payload
            if stream.expected < 0 and len(body) >= 5:
                stream.compressed, stream.expected = bool(body[0]), int.from_bytes(body[1:5], "big")
                largest = stream.call.largest or self.limits.max_message
                if body[0] > 1:
                    self._answer(stream, StatusCode.INVALID_ARGUMENT, f"compressed flag {body[0]}: 0 or 1")
                    return
                if stream.expected > largest:
                    self._answer(stream, StatusCode.RESOURCE_EXHAUSTED, _too_large(stream.expected, largest))
                    return
            if stream.expected >= 0 and len(body) > 5 + stream.expected:
                self._answer(stream, StatusCode.INVALID_ARGUMENT, "more than one request message in a unary call")
                return
        if flags & END_STREAM:
            self._end_of_message(stream)
        elif size:
            stream.unacked += size
            if stream.unacked >= self.limits.stream_window // 2:
                self.out.append(frame(WINDOW_UPDATE, 0, sid, struct.pack(">L", stream.unacked)))
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
        message = bytes(memoryview(body)[5:])
        stream.body = b""
        if stream.compressed:
            try:
                message = self._inflate(stream.encoding, message, call.largest or self.limits.max_message)
            except GrpcError as exc:
                self._answer(stream, exc.code, exc.message)
                return
        call.message = message
        self.service.received(call)
        stream.task = asyncio.get_running_loop().create_task(self._run(stream, call))

    def _inflate(self, encoding: str, message: bytes, largest: int) -> bytes:
        if encoding not in ("gzip", "deflate"):
            raise GrpcError(StatusCode.UNIMPLEMENTED, f"compression {encoding!r} is not supported; use gzip or deflate")
        inflater = zlib.decompressobj(31 if encoding == "gzip" else 15)
        try:
            out = inflater.decompress(message, largest + 1)
        except zlib.error as exc:  # the client's message: INVALID_ARGUMENT, as HTTP answers such a body 400
            raise GrpcError(StatusCode.INVALID_ARGUMENT, f"the {encoding} message does not decompress: {exc}") from None
        if len(out) > largest:
            raise GrpcError(
                StatusCode.RESOURCE_EXHAUSTED,
                f"Received message larger than max (over {largest} bytes decompressed vs. {largest})",
            )
        # Cut short (a lost end, or a sync flush before it) or followed by more: never served as what it inflates to.
        if not inflater.eof:
            raise GrpcError(StatusCode.INVALID_ARGUMENT, f"the {encoding} message is cut short")
        if inflater.unused_data:
            raise GrpcError(StatusCode.INVALID_ARGUMENT, f"the {encoding} message has bytes after its end")
        return out

    def _settings(self, flags: int, stream: int, payload: bytes) -> None:
        if stream:
            raise ProtocolViolation(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise ProtocolViolation(FRAME_SIZE_ERROR, "a SETTINGS acknowledgement with a payload")
            return
        if len(payload) % 6:
            raise ProtocolViolation(FRAME_SIZE_ERROR, "SETTINGS not a multiple of 6 bytes")
        for offset in range(0, len(payload), 6):
            key, value = struct.unpack_from(">HL", payload, offset)
            if key == SETTINGS_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ProtocolViolation(FLOW_CONTROL_ERROR, "an initial window past 2^31-1")
                delta, self.peer_window = value - self.peer_window, value
                for open_stream in self.streams.values():
                    open_stream.send_window += delta
            elif key == SETTINGS_MAX_FRAME_SIZE:
                if not FRAME_SIZE <= value <= 2**24 - 1:
                    raise ProtocolViolation(PROTOCOL_ERROR, "a max frame size out of range")
                self.peer_frame = value
            # Header table size: replies never use the peer's dynamic table, so any size suits them.
        self.out.append(frame(SETTINGS, ACK, 0))
        self._send_pending()

    def _window_update(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ProtocolViolation(FRAME_SIZE_ERROR, "a WINDOW_UPDATE not of 4 bytes")
        increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if not sid:
            if not increment:
                raise ProtocolViolation(PROTOCOL_ERROR, "a WINDOW_UPDATE of 0")
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                raise ProtocolViolation(FLOW_CONTROL_ERROR, "the connection window past 2^31-1")
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
            raise ProtocolViolation(FRAME_SIZE_ERROR, "an RST_STREAM not of 4 bytes")
        if not sid or sid > self.last_stream:
            raise ProtocolViolation(PROTOCOL_ERROR, f"RST_STREAM on idle stream {sid}")
        now = time.monotonic()
        if now - self.resets_since >= 1.0:
            self.resets, self.resets_since = 0, now
        self.resets += 1
        if self.resets > self.limits.resets_per_second:
            raise ProtocolViolation(ENHANCE_YOUR_CALM, "too many streams reset")
        stream = self.streams.get(sid)
        if stream is not None:
            self._drop(stream)

    def _empty_frame(self) -> None:
        self.empty += 1
        if self.empty > self.limits.empty_frames:
            raise ProtocolViolation(ENHANCE_YOUR_CALM, "too many empty frames")

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
        self.out.append(frame(HEADERS, END_HEADERS, stream.id, REPLY_HEADERS))
        stream.pending, stream.trailers = data, frame(HEADERS, END_HEADERS | END_STREAM, stream.id, TRAILERS_OK)
        stream.progress = time.monotonic()
        self._send_stream(stream)

    def _answer(self, stream: Stream, code: StatusCode, message: str) -> None:
        """A trailers-only reply: the status alone, in one HEADERS frame that ends the stream."""
        if self.closed or stream.id not in self.streams or stream.answered:
            return
        if stream.call is not None:
            stream.call.status = code
        stream.answered = True
        block = REPLY_HEADERS + status_block(code, message)
        self.out.append(frame(HEADERS, END_HEADERS | END_STREAM, stream.id, block))
        self._finish(stream)

    def _answer_http(self, stream: Stream, status: int) -> None:
        block = integer(8, 4, 0) + integer(3, 7, 0) + str(status).encode()  # :status (static name 8), not indexed
        stream.answered = True
        self.out.append(frame(HEADERS, END_HEADERS | END_STREAM, stream.id, block))
        self._finish(stream)

    def _send_stream(self, stream: Stream) -> None:
        """Send what the windows allow of a reply's DATA, then its trailers once all is sent."""
        data, offset, end = stream.pending, stream.offset, len(stream.pending)
        while offset < end:
            room = min(self.send_window, stream.send_window, self.peer_frame, end - offset)
            if room <= 0:
                break
            self.out.append(frame(DATA, 0, stream.id, data[offset : offset + room]))
            self.send_window -= room
            stream.send_window -= room
            offset += room
        if offset > stream.offset:
            stream.offset, stream.progress = offset, time.monotonic()
        if offset >= end:
            stream.pending, stream.offset = b"", 0
        if not stream.pending and stream.trailers:
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
            self.out.append(frame(RST_STREAM, 0, stream.id, struct.pack(">L", NO_ERROR)))
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
        self.out.append(frame(RST_STREAM, 0, sid, struct.pack(">L", code)))

    # -- the connection

    def _goaway_frame(self, code: int, reason: bytes = b"") -> bytes:
        return frame(GOAWAY, 0, 0, struct.pack(">LL", self.last_stream, code) + reason)

    def _fail(self, code: int, reason: str) -> None:
        logger.debug("gRPC connection closed: %s", reason)
        for stream in list(self.streams.values()):  # (first: the calls have ended when the peer reads why)
            self._drop(stream)
        self.out.append(self._goaway_frame(code, reason.encode()[:256]))
        self._flush()
        if self.transport is not None:
            self.transport.close()
        self.closed = True

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
            if stream.pending and now - stream.progress > limits.message_timeout:  # the client opens no window
                self._drop(stream)
                self._send_reset(stream.id, CANCEL)
            elif not stream.half_closed and not stream.answered and now - stream.started > limits.message_timeout:
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


def _too_large(size: int, largest: int) -> str:
    return f"Received message larger than max ({size} vs. {largest})"


class GrpcServer:
    """The listening side: the connections, their count bound, the sweep, and the drain on shutdown."""

    def __init__(self, service: Service, limits: Limits) -> None:
        self.service, self.limits = service, limits
        self.connections: set[GrpcConnection] = set()
        self.server: asyncio.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._drained: asyncio.Event | None = None  # set once no call is under way, while stopping

    async def start(self, sock: socket.socket) -> None:
        """Serve on ``sock``, bound and listening."""
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: GrpcConnection(self), sock=sock)
        self._sweeper = loop.call_later(1.0, self._sweep)

    def accept(self, connection: GrpcConnection) -> bool:
        """Past ``max_connections`` the connection idle the longest is sent GOAWAY to make room, as the HTTP
        side closes its longest idle one; only when every connection has a call under way is a newcomer refused."""
        if len(self.connections) >= self.limits.max_connections:
            idle = [c for c in self.connections if not c.streams and not c.closed]
            if not idle:
                return False
            oldest = min(idle, key=lambda c: c.idle_since)
            oldest.go_away()
            self.forget(oldest)
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
