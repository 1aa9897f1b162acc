"""uvicorn's httptools protocol with every client-controlled connection resource bounded.

Per connection, before anything is spent:

- the request line and headers: at most ``max_head_bytes`` bytes and ``max_headers`` lines (431);
- the time to send them: ``head_timeout`` seconds from the connection's start or the request's
  first byte (408, or a silent close for a connection that never sent a byte);
- the request body's pace: at least ``min_body_rate`` bytes per second (and at least one byte) in
  every ``body_read_timeout`` seconds, else 408 (nginx's ``client_body_timeout`` counts only the
  gap between reads, which a byte now and then defeats); time the server itself holds the body
  back (flow control, a 100-continue not yet sent) does not count;
- open connections per worker: past ``max_connections``, the connection idle or stuck in its
  head the longest is closed to make room, else the one whose body arrives the slowest; when
  every one is busy, the newcomer gets a JSON 503 with ``Retry-After`` and is closed (uvicorn's
  own ``limit_concurrency`` answers text/plain and counts slow clients against everybody);
- request bodies held at once per worker: a request whose declared body would take the bytes of
  the bodies being received or served past ``max_inflight_bytes`` gets a JSON 503 with
  ``Retry-After`` before its body is read (a request alone is never refused: ``--max-body-bytes``
  bounds it); requests without a body (probes, metrics) are never refused;
- a kept-alive connection's age: past ``max_age`` seconds its next reply carries
  ``Connection: close``, so clients reconnect and spread over workers and replicas again.

New connections are accepted on a schedule of their own (``_Backlog``): uvloop (libuv) accepts one
connection per pass of the event loop, and a pass under 1,000 busy keep-alive connections takes
tens of milliseconds or more, so a newcomer waited seconds in the kernel's accept queue behind
others (every kept-alive client reconnects each ``max_age``). Each connection uvloop accepts now
takes the rest of the queue with it, so a new client is read in the next pass and answered, or
refused by the caps above, like any other.

Every refusal is JSON with a stable ``code``, as the app's own errors are. Reaching the cap is logged as
one line per ``CAP_LOG_S`` at most, with the count since the last one, never a line per connection.

The time bounds (the head timeout, and uvicorn's keep-alive timeout) are enforced by one sweep per
worker every ``SWEEP_S``, not by timers: uvicorn arms and cancels a timer per request, and a second
one for the head would double that on the hot path. A bound is thus met within ``SWEEP_S`` late.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
from dataclasses import dataclass, replace
from typing import Any, cast

import httptools
import orjson
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

from ferry.server.lane import LaneProtocol
from ferry.settings import Settings


@dataclass(frozen=True)
class ConnectionLimits:
    """The bounds above, each from its setting (``Settings``: --max-header-bytes, --header-timeout, ...)."""

    max_head_bytes: int
    max_headers: int
    head_timeout: float
    body_read_timeout: float
    min_body_rate: int  # bytes per second, averaged over each body_read_timeout
    max_connections: int
    max_inflight_bytes: int  # 0: no bound
    max_age: float  # 0: kept alive for as long as the client likes

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> ConnectionLimits:
        """Every limit from ``settings``; ``overrides`` for a server with settings of its own (the gateway)."""
        limits = cls(
            max_head_bytes=settings.max_header_bytes,
            max_headers=settings.max_headers,
            head_timeout=settings.header_timeout,
            body_read_timeout=settings.body_read_timeout,
            min_body_rate=settings.min_body_rate,
            max_connections=settings.max_connections,
            max_inflight_bytes=settings.max_inflight_bytes,
            max_age=settings.connection_max_age,
        )
        return replace(limits, **overrides)


DEFAULT_LIMITS = ConnectionLimits.from_settings(Settings())
# What this layer reads, writes or calls by name of uvicorn's httptools protocol and request cycle beyond their
# public interface (``ferry.server.lane`` lists the lane's): tests/test_pipeline.py fails when one drifts.
PRIVATE_NAMES = (
    *(
        (HttpToolsProtocol, name)
        for name in (
            "_should_upgrade",
            "_unsupported_upgrade_warning",
            "handle_websocket_upgrade",
            "connections",
            "cycle",
            "flow",
            "headers",
            "limit_concurrency",
            "loop",
            "parser",
            "pipeline",
            "server_state",
            "timeout_keep_alive",
            "transport",
            "on_message_begin",
            "on_header",
            "on_headers_complete",
            "on_body",
            "on_message_complete",
            "on_response_complete",
        )
    ),
    *(
        (RequestResponseCycle, name)
        for name in (
            "disconnected",
            "keep_alive",
            "message_event",
            "response_complete",
            "response_started",
            "transport",
            "waiting_for_100_continue",
        )
    ),
)
LINGER_S = 1.0  # after a refusal, how long the client may keep sending before the connection is cut
LINGER_BYTES = 1024 * 1024
SWEEP_S = 0.25  # how often the time bounds are checked, at most
BODY_EVICTION_AGE_S = 1.0  # a body under way for less is never evicted: its pace is not known yet
CAP_LOG_S = 10.0  # at most one line this often while connections are over the cap
ACCEPT_BATCH = 512  # connections taken from the accept queue at once, beside the one uvloop accepted
logger = logging.getLogger("ferry.connections")


class _Sweeper:
    """Every ``SWEEP_S``, applies the time bounds to each open connection of one server (one worker)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, connections: set[Any]) -> None:
        self.loop, self.connections = loop, connections
        self.evicted = self.refused = self.shed = 0  # past the caps, since the last line about them
        self.inflight = 0  # bytes of the request bodies this server's connections hold (declared lengths)
        self.logged_at = -CAP_LOG_S
        self.loop.call_later(SWEEP_S, self.sweep)

    @classmethod
    def of(cls, protocol: HttpToolsProtocol) -> _Sweeper:
        """The sweep of ``protocol``'s server, started by its first connection; kept on uvicorn's server state."""
        state = protocol.server_state
        sweeper: _Sweeper | None = getattr(state, "ferry_sweeper", None)
        if sweeper is None:
            sweeper = cls(protocol.loop, protocol.connections)
            state.ferry_sweeper = sweeper  # type: ignore[attr-defined]
        return sweeper

    def sweep(self) -> None:
        now = self.loop.time()
        for connection in list(self.connections):
            if isinstance(connection, BoundedHttpProtocol):
                connection.check_time(now)
        if (self.evicted or self.refused or self.shed) and now - self.logged_at >= CAP_LOG_S:
            logger.warning(
                "open connections at the cap: %d closed to make room, %d refused with 503; %d requests refused "
                "for bytes in flight; since the last line",
                self.evicted,
                self.refused,
                self.shed,
            )
            self.evicted = self.refused = self.shed = 0
            self.logged_at = now
        self.loop.call_later(SWEEP_S, self.sweep)


class _Backlog:
    """The listening socket of one server (worker), drained of waiting connections whenever uvloop accepts one.

    uvicorn does not hand its listening socket to the protocol, so it is found once by its address
    among the process's descriptors, and kept by number and inode: once uvicorn closes it (the
    server is draining), the inode no longer matches and nothing more is accepted here.
    """

    def __init__(self, fd: int, inode: int) -> None:
        self.fd, self.inode = fd, inode

    @classmethod
    def of(cls, protocol: BoundedHttpProtocol) -> _Backlog | None:
        state = protocol.server_state
        found = getattr(state, "ferry_backlog", _UNKNOWN)
        if found is _UNKNOWN:
            found = state.ferry_backlog = cls.find(protocol.transport.get_extra_info("sockname"))  # type: ignore[attr-defined]
        return cast(_Backlog | None, found)

    @classmethod
    def find(cls, address: Any) -> _Backlog | None:
        """The listening TCP socket that ``address`` (a connection's local end) was accepted on."""
        if not isinstance(address, tuple) or len(address) < 2:
            return None  # a Unix socket: its clients are local, and few
        try:
            fds = [int(name) for name in os.listdir("/dev/fd")]
        except OSError:
            return None
        for fd in fds:
            try:
                info = os.fstat(fd)
                if not stat.S_ISSOCK(info.st_mode):
                    continue
                sock = socket.socket(fileno=fd)
            except OSError:
                continue
            try:
                if sock.type != socket.SOCK_STREAM or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                    continue
                host, port = sock.getsockname()[:2]
                if port == address[1] and host in (address[0], "0.0.0.0", "::"):
                    return cls(fd, info.st_ino)
            except OSError:
                continue
            finally:
                sock.detach()  # (the descriptor stays uvicorn's)
        return None

    def drain(self, protocol: BoundedHttpProtocol) -> None:
        """Accept up to ``ACCEPT_BATCH`` waiting connections, each served by a new protocol like ``protocol``."""
        try:
            if os.fstat(self.fd).st_ino != self.inode:
                raise OSError
            listener = socket.socket(fileno=self.fd)
        except OSError:
            self.fd = -1  # closed: the server is stopping
            return
        accepted = []
        try:
            listener.setblocking(False)
            for _ in range(ACCEPT_BATCH):
                client, _ = listener.accept()
                accepted.append(client)
        except OSError:  # none waiting (or out of descriptors: the caps and uvloop deal with that)
            pass
        finally:
            listener.detach()
        loop = protocol.loop
        for client in accepted:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            loop.create_task(_open(loop, protocol, client))


async def _open(loop: asyncio.AbstractEventLoop, like: BoundedHttpProtocol, client: socket.socket) -> None:
    def factory() -> BoundedHttpProtocol:
        protocol = type(like)(like.config, server_state=like.server_state, app_state=like.app_state, _loop=loop)
        protocol.from_backlog = True
        return protocol

    try:
        await loop.connect_accepted_socket(factory, client)
    except OSError:
        client.close()  # reset before it was served


_UNKNOWN = object()


class _HeadTooLarge(Exception):
    pass


class _TooManyBytesInFlight(Exception):
    pass


class _OnePacketReply:
    """The transport a request's reply is written to: its head is held until its first body bytes.

    uvicorn writes a reply's head and its body separately, and with TCP_NODELAY each write is a send
    syscall and a packet; a reply of a few hundred bytes then costs two of each. The held head goes
    out with the body, or alone when the reply ends without one (HEAD, 204) or the connection closes.
    """

    __slots__ = ("head_next", "held", "transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.held: bytes | None = None
        # The next write is a reply's head: none is in progress (a pipelined request's reply starts only
        # once the one before it is complete).
        self.head_next = True

    def write(self, data: bytes) -> None:
        if self.head_next and not data.startswith(b"HTTP/1.1 100 "):  # "100 Continue" goes at once, alone
            self.head_next = False
            self.held = data
            return
        held = self.held
        if held is not None:
            self.held = None
            data = held + data
        self.transport.write(data)

    def flush(self) -> None:
        held = self.held
        if held is not None:
            self.held = None
            self.transport.write(held)

    def reply_complete(self) -> None:
        self.flush()  # a reply without a body (HEAD, 204, 304) ends here
        self.head_next = True

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def close(self) -> None:
        self.flush()
        self.transport.close()


class BoundedHttpProtocol(LaneProtocol):
    """One HTTP/1.1 connection; the bounds (see the module docstring) come as ``config.connection_limits``.

    Its requests go to the app's request pipeline when their body is whole (``ferry.server.lane``)."""

    def __init__(self, config: Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self.limits: ConnectionLimits = getattr(config, "connection_limits", DEFAULT_LIMITS)
        self.limit_concurrency = None  # the cap is applied at connection time, below
        self.in_head = True  # the next bytes belong to a request head (from the last body's end to the next head's)
        self.head_bytes = 0
        self.header_count = 0
        self.heads_done = 0
        self.discarding, self.discarded = False, 0  # refused: reading only to let the answer arrive
        # The current request's body: bytes received, and the window its pace is measured over.
        self.body_bytes = self.window_bytes = 0
        self.declared = self.held = 0  # the next body's Content-Length; bytes counted in the server's inflight
        # When this connection began to wait on its client (connected, head begun, or reply sent).
        self.opened = self.waiting_since = self.window_at = self.loop.time()
        self.sweeper = _Sweeper.of(self)
        self.from_backlog = False  # accepted by ``_Backlog``, not uvloop

    # -- connection -----------------------------------------------------------------------------------
    def connection_lost(self, exc: Exception | None) -> None:
        self._release()
        super().connection_lost(exc)  # marks the cycle disconnected, cancels the request's task

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.reply = _OnePacketReply(transport)
        if not self.from_backlog:  # accepted by uvloop, one per pass: the others waiting come with it
            backlog = _Backlog.of(self)
            if backlog is not None and backlog.fd >= 0:
                backlog.drain(self)
        if len(self.connections) > self.limits.max_connections:
            if self._evict_one():
                self.sweeper.evicted += 1
            else:
                self.sweeper.refused += 1
                self._refuse(503, "overloaded", "too many open connections; retry shortly", retry_after=True)

    def _evict_one(self) -> bool:
        """Close the connection stuck in its head, else idle, the longest; else the slowest body under way.

        False when none may go: every one is being answered, or sending its body at a pace not yet known.
        """
        victim, oldest = None, float("inf")
        slow, slowest = None, float("inf")
        now = self.loop.time()
        for other in self.connections:
            if other is self or not isinstance(other, BoundedHttpProtocol):
                continue
            if other.evictable():
                if other.waiting_since < oldest:
                    victim, oldest = other, other.waiting_since
            elif victim is None and (pace := other.body_pace(now)) is not None and pace < slowest:
                slow, slowest = other, pace
        victim = victim or slow
        if victim is None:
            return False
        victim.transport.close()
        self.connections.discard(victim)
        return True

    def evictable(self) -> bool:
        return self.in_head and (self.cycle is None or self.cycle.response_complete)

    def body_pace(self, now: float) -> float | None:
        """Bytes per second of the body under way, if the client alone sets its pace and has for a while."""
        if self.in_head or self.discarding or self._body_held_back():
            return None
        elapsed = now - self.waiting_since
        return self.body_bytes / elapsed if elapsed >= BODY_EVICTION_AGE_S else None

    def _body_held_back(self) -> bool:
        """Whether the server, not the client, is why the body is not arriving (or it is no longer awaited)."""
        cycle = self.cycle
        return cycle is None or cycle.response_started or cycle.waiting_for_100_continue or self.flow.read_paused

    # -- request head ---------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self.discarding:
            self.discarded += len(data)
            if self.discarded > LINGER_BYTES:
                self.transport.close()
            return
        if self.in_head:
            room = self.limits.max_head_bytes - self.head_bytes
            if len(data) > room:
                # Feed only what the head may still hold; an unfinished head past that is refused
                # before httptools buffers any more of it.
                heads = self.heads_done
                if self._feed(data[:room]) and self.heads_done == heads:
                    self._too_large(f"request line and headers exceed {self.limits.max_head_bytes} bytes")
                elif not self.transport.is_closing():
                    self._feed(data[room:])
                return
            self.head_bytes += len(data)
        self._feed(data)

    def _feed(self, data: bytes) -> bool:
        """Parse ``data``; False when the connection was refused."""
        if self.parser is None or self.transport.is_closing():
            return False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _TooManyBytesInFlight):
                message = f"request bodies in flight exceed {self.limits.max_inflight_bytes} bytes; retry shortly"
                self._refuse(503, "overloaded", message, retry_after=True)
                return False
            if not isinstance(exc.__context__, _HeadTooLarge):
                raise
            self._too_large(f"more than {self.limits.max_headers} header lines")
            return False
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError:
            self._refuse(400, "malformed", "invalid HTTP request")
            return False
        return True

    # The per-request callbacks call uvicorn's by name, not through super(): they run on every request.
    def on_message_begin(self) -> None:
        HttpToolsProtocol.on_message_begin(self)
        self.in_head, self.header_count, self.waiting_since = True, 0, self.loop.time()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_count += 1
        if self.header_count > self.limits.max_headers:
            raise _HeadTooLarge
        HttpToolsProtocol.on_header(self, name, value)
        name, value = self.headers[-1]  # (as uvicorn's keeps it: lowercased, trimmed)
        if name == b"content-length" and value.isdigit():
            self.declared = int(value)

    def on_headers_complete(self) -> None:
        declared, self.declared = self.declared, 0
        if declared and self.limits.max_inflight_bytes:
            sweeper = self.sweeper
            if sweeper.inflight and sweeper.inflight + declared > self.limits.max_inflight_bytes:
                sweeper.shed += 1
                raise _TooManyBytesInFlight
            sweeper.inflight += declared
            self.held += declared  # (a pipelined request's too: released with the reply in progress)
        self.in_head = False
        self.head_bytes = self.header_count = self.body_bytes = self.window_bytes = 0
        self.window_at = self.waiting_since
        self.heads_done += 1
        HttpToolsProtocol.on_headers_complete(self)
        if self.cycle is not None:
            self.cycle.transport = self.reply  # type: ignore[assignment]
        max_age = self.limits.max_age
        if max_age and self.cycle is not None and self.loop.time() - self.opened > max_age:
            self.cycle.keep_alive = False  # the reply says Connection: close; the client reconnects

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)
        HttpToolsProtocol.on_body(self, body)

    def on_message_complete(self) -> None:
        HttpToolsProtocol.on_message_complete(self)
        self.in_head = True  # the body is in: what comes next is the next request's head

    def on_response_complete(self) -> None:
        """uvicorn's, less its keep-alive timer: the sweep closes an idle connection (``check_time``)."""
        self.reply.reply_complete()
        if self.held:
            self._release()
        self.waiting_since = self.loop.time()
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)

    def _release(self) -> None:
        self.sweeper.inflight -= self.held
        self.held = 0

    def check_time(self, now: float) -> None:
        """The sweep's visit: a head past the head timeout, or a body below its pace, gets a 408; an idle
        connection past its timeout closes."""
        if self.discarding or self.transport.is_closing():
            return
        if not self.in_head:
            self._check_body_pace(now)
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a reply is in progress (a pipelined head waits behind it): not the client's delay
        waited = now - self.waiting_since
        if self.head_bytes or self.header_count:
            limit = self.limits.head_timeout
            if waited > limit:
                self._refuse(408, "request_timeout", f"request headers not received within {limit:g} s")
        elif waited > (self.timeout_keep_alive if self.heads_done else self.limits.head_timeout):
            self.transport.close()  # kept alive and idle, or connected and never sent a byte: nobody to answer

    def _check_body_pace(self, now: float) -> None:
        if self._body_held_back():
            self.window_at, self.window_bytes = now, self.body_bytes  # not the client's delay: measure afresh
            return
        window = now - self.window_at
        if window < self.limits.body_read_timeout:
            return
        received, wanted = self.body_bytes - self.window_bytes, max(1.0, self.limits.min_body_rate * window)
        if received < wanted:
            message = f"request body too slow: {received} bytes in {window:.1f} s"
            if self.limits.min_body_rate:
                message += f", below the minimum of {self.limits.min_body_rate} bytes/s"
            self._refuse(408, "request_timeout", message)
            return
        self.window_at, self.window_bytes = now, self.body_bytes

    # -- refusals -------------------------------------------------------------------------------------
    def _too_large(self, message: str) -> None:
        self._refuse(431, "headers_too_large", message)

    def _refuse(self, status: int, code: str, message: str, retry_after: bool = False) -> None:
        """Answer JSON and close, unless a reply is already on its way (then only close).

        A request whose body was still being read is over for the app too: it reads a disconnect, and
        anything it sends is dropped.
        """
        cycle = self.cycle
        reading_body = not self.in_head and cycle is not None and not cycle.response_started
        if cycle is None or cycle.response_complete or reading_body:
            body = orjson.dumps({"error": message, "code": code})
            head = [STATUS_LINE[status], b"content-type: application/json\r\n"]
            if retry_after:
                head.append(b"retry-after: 1\r\n")
            head.append(b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body))
            self.transport.write(b"".join(head) + body)
        if reading_body:
            assert cycle is not None
            cycle.disconnected = True
            cycle.message_event.set()
        self._linger()

    def _linger(self) -> None:
        """Close after the client has read the answer: stop writing, discard what it still sends.

        Closing with unread input makes the kernel send a reset, and the reset can destroy an
        answer the client has not read yet (the 431 to a client still sending its headers).
        """
        self.discarding = True
        self.connections.discard(self)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)
