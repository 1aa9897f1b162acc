"""The probe listener: ``/health``, ``/ready`` and ``/metrics`` on a port and a thread of their own.

The request loop can be saturated (1,000 keep-alive clients), full (every connection slot held by
slow clients) or wedged (a blocking call). Kubelet probes open a fresh connection each time, so a
probe served by that loop waits behind its work and a healthy pod gets restarted. Here a second,
tiny asyncio loop in a daemon thread answers probes from shared state:

- liveness is the request loop's heartbeat: it ticks every 100 ms, and a tick older than
  ``STALL_S`` reads as not live (503), so a wedged loop gets restarted and a busy one does not;
- readiness is the data plane's (``ModelQueries.readiness``: every model READY, not draining), as HTTP's
  ``/ready`` answers it, and the loop's liveness;
- metrics are rendered from the same registry the request loop writes.

The listener bounds what a client may hold: ``HEAD_LIMIT`` bytes and ``HEAD_TIMEOUT_S`` seconds per
request, one request per connection, and ``MAX_CLIENTS`` connections. A probe sends its head with its
connection and is answered at once, so a full listener is full of clients that send nothing: a newcomer
closes the one that has waited longest for its head, and a probe is always answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable

import orjson

from ferry.serving.models import ModelQueries

logger = logging.getLogger("ferry.probes")

TICK_S = 0.1  # the request loop's heartbeat period
STALL_S = 5.0  # a heartbeat this old: the request loop is wedged
MAX_CLIENTS = 64
HEAD_LIMIT = 8192
HEAD_TIMEOUT_S = 2.0  # kubelet sends its probe with the connection and waits 1 s by default

LIVE_PATHS = frozenset({"/health", "/v2/health/live"})
READY_PATHS = frozenset({"/ready", "/v2/health/ready"})

Reply = tuple[int, bytes, bytes]  # status, content type, body
_JSON = b"application/json"
_REASONS = {200: b"OK", 404: b"Not Found", 405: b"Method Not Allowed", 503: b"Service Unavailable"}


class Heartbeat:
    """The request loop's last tick, written there and read by the probe thread."""

    def __init__(self) -> None:
        self.last = time.monotonic()

    async def run(self) -> None:
        while True:
            self.last = time.monotonic()
            await asyncio.sleep(TICK_S)

    def lag(self) -> float:
        return time.monotonic() - self.last


class ProbeAnswers:
    """What each probe path answers, from the shared state; called on the probe thread."""

    def __init__(self, queries: ModelQueries, heartbeat: Heartbeat) -> None:
        self.queries = queries
        self.metrics = queries.plane.metrics
        self.heartbeat = heartbeat

    def answer(self, method: str, path: str) -> Reply:
        if method not in ("GET", "HEAD"):
            return 405, _JSON, orjson.dumps({"error": f"method {method} not allowed", "code": "http_405"})
        if path in LIVE_PATHS:
            return self.live()
        if path in READY_PATHS:
            return self.ready()
        if path == "/metrics":
            return 200, b"text/plain; version=0.0.4; charset=utf-8", self.metrics.render()
        return 404, _JSON, orjson.dumps({"error": f"no route {method} {path} on the probe port", "code": "http_404"})

    def live(self) -> Reply:
        lag = self.heartbeat.lag()
        if lag > STALL_S:
            body = {"health": "stalled", "error": f"the request loop has not run for {lag:.1f} s"}
            return 503, _JSON, orjson.dumps(body)
        return 200, _JSON, orjson.dumps({"health": "ok"})

    def ready(self) -> Reply:
        """HTTP's ``/ready`` (``ModelQueries.readiness``), not ready too while the request loop is stalled."""
        readiness = self.queries.readiness(loop_live=self.heartbeat.lag() <= STALL_S)
        return (200 if readiness.ready else 503), _JSON, orjson.dumps(readiness.body())


class ProbeListener:
    """A daemon thread running its own event loop on ``sock``; ``close`` stops it."""

    def __init__(self, sock: socket.socket, answer: Callable[[str, str], Reply]) -> None:
        self.sock = sock
        self.answer = answer
        self.loop = asyncio.new_event_loop()
        self.clients: dict[asyncio.StreamWriter, None] = {}  # (an ordered set) still waiting for a head, oldest first
        self.thread = threading.Thread(target=self._run, name="ferry-probes", daemon=True)
        self._stopped = asyncio.Event()

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self._stopped.set)
            self.thread.join(5)

    def _run(self) -> None:
        try:
            self.loop.run_until_complete(self._serve())
        finally:
            self.loop.close()

    async def _serve(self) -> None:
        server = await asyncio.start_server(self._client, sock=self.sock, limit=HEAD_LIMIT)
        async with server:
            await self._stopped.wait()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self.clients) >= MAX_CLIENTS:
            self._evict_oldest()
        self.clients[writer] = None
        try:
            async with _closing(writer):
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S)
                self.clients.pop(writer, None)  # answering now: no longer evictable
                method, _, rest = head.partition(b" ")
                path = rest.partition(b" ")[0].partition(b"?")[0].decode("latin-1")
                status, content_type, body = self.answer(method.decode("latin-1"), path)
                writer.write(_response(status, content_type, b"" if method == b"HEAD" else body, len(body)))
                await asyncio.wait_for(writer.drain(), HEAD_TIMEOUT_S)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass  # a slow, oversized or vanished probe client is simply dropped
        except Exception:  # a probe must never take the listener down
            logger.exception("probe listener: answering failed")
        finally:
            self.clients.pop(writer, None)

    def _evict_oldest(self) -> None:
        """Close the connection that has waited longest for its head (its read then ends, and its task)."""
        writer = next(iter(self.clients))
        del self.clients[writer]
        writer.transport.abort()


def _response(status: int, content_type: bytes, body: bytes, length: int) -> bytes:
    return b"".join(
        [
            b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"")),
            b"content-type: " + content_type + b"\r\n",
            b"content-length: %d\r\n" % length,
            b"cache-control: no-store\r\nconnection: close\r\n\r\n",
            body,
        ]
    )


@contextlib.asynccontextmanager
async def _closing(writer: asyncio.StreamWriter) -> AsyncIterator[None]:
    try:
        yield
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), HEAD_TIMEOUT_S)
