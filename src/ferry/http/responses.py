"""JSON responses and the one place where errors become HTTP."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from ferry.errors import FerryError, MalformedRequest, PayloadTooLarge, RequestTimeout, UnsupportedEncoding
from ferry.observability.context import with_request_id
from ferry.serving.dataplane import report
from ferry.serving.timers import CoarseTimers

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def json_response(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content, option=_OPTIONS), status, headers, media_type="application/json")


def error_answer(error: FerryError) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The one JSON shape of every HTTP error: ``error``, ``code``, (``field``) and the ``request_id``."""
    headers = [(b"content-type", b"application/json")]
    if error.headers:
        headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in error.headers.items()]
    return orjson.dumps(with_request_id(error.to_dict()), option=_OPTIONS), headers


def error_http(error: FerryError) -> Response:
    """A reported error as a Starlette response."""
    content, headers = error_answer(error)
    extra = {k.decode("latin-1"): v.decode("latin-1") for k, v in headers[1:]}
    return Response(content, error.status, extra, media_type="application/json")


def error_response(exc: Exception) -> Response:
    """A Starlette response for any error, after the shared ``report`` policy (logging) has seen it."""
    return error_http(report(exc))


async def read_body(request: Request, limit: int, timeout: float = 30.0) -> bytes:
    """The request body of a Starlette request; see ``read_asgi_body``."""
    return await read_asgi_body(request.scope, request.receive, limit, timeout)


async def read_asgi_body(scope: Scope, receive: Receive, limit: int, timeout: float = 30.0) -> bytes:
    """The whole body: 413 past ``limit`` bytes (declared or streamed), 408 if it takes over ``timeout`` s.

    A body sent with ``Content-Encoding: gzip`` or ``deflate`` is decompressed, and the limit holds for
    what it decompresses to as well, so a small bomb is refused before it grows.
    """
    encoding = _declared(scope["headers"], limit)
    return _decoded(await read_raw_body(receive, limit, timeout), encoding, limit)


def whole_body(headers: list[tuple[bytes, bytes]], body: bytes, limit: int) -> bytes:
    """``read_asgi_body`` for a body already received whole: the same limits and decoding."""
    encoding = _declared(headers, limit)
    if len(body) > limit:
        raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
    return _decoded(body, encoding, limit)


def _declared(headers: list[tuple[bytes, bytes]], limit: int) -> bytes | None:
    """The body's Content-Encoding; a 413 at once when its declared length is past ``limit``."""
    encoding = None
    for key, value in headers:
        if key == b"content-length" and value.isdigit() and int(value) > limit:
            raise PayloadTooLarge(f"request body of {int(value)} bytes exceeds the limit of {limit} bytes")
        if key == b"content-encoding":
            encoding = value.strip().lower()
    return encoding


def _decoded(body: bytes, encoding: bytes | None, limit: int) -> bytes:
    if encoding is None or encoding == b"identity":
        return body
    return decompress(body, encoding, limit)


def decompress(body: bytes, encoding: bytes, limit: int) -> bytes:
    """A gzip or deflate body, inflated to at most ``limit`` bytes (413 past it, 415 for another coding)."""
    if encoding in (b"gzip", b"x-gzip"):
        wbits = 16 + zlib.MAX_WBITS
    elif encoding == b"deflate":
        wbits = zlib.MAX_WBITS if body[:1] == b"\x78" else -zlib.MAX_WBITS  # zlib-wrapped, or raw as some send
    else:
        raise UnsupportedEncoding(
            f"Content-Encoding {encoding[:20].decode('latin-1')!r} is not supported; send gzip, deflate or identity"
        )
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise MalformedRequest(f"request body is not valid {encoding.decode()} data: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(f"decompressed request body exceeds the limit of {limit} bytes")
    if not inflater.eof:
        raise MalformedRequest(f"request body is truncated {encoding.decode()} data")
    if inflater.unused_data:  # (a second gzip member, or anything else: never silently dropped)
        raise MalformedRequest(f"request body has bytes after its {encoding.decode()} data")
    return out


async def read_body_as_sent(scope: Scope, receive: Receive, limit: int, timeout: float = 30.0) -> bytes:
    """The body as sent (still compressed), for ``whole_body`` to decode: a 413 at once when its declared
    length is past ``limit``, as ``read_asgi_body``'s."""
    _declared(scope["headers"], limit)
    return await read_raw_body(receive, limit, timeout)


async def read_raw_body(receive: Receive, limit: int, timeout: float) -> bytes:
    task = asyncio.current_task()
    assert task is not None
    loop = task.get_loop()
    timers, expired = CoarseTimers.of(loop), _Expired()  # a body timeout needs no per-request loop timer
    timers.add(loop, task, timeout, expired.cancel, task)
    try:
        message = await receive()
        body: bytes = message.get("body", b"")
        if len(body) > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        if not message.get("more_body", False):
            return body
        chunks, size = [body], len(body)
        while message.get("more_body", False):
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
    except asyncio.CancelledError:
        if expired.fired:
            task.uncancel()
            raise RequestTimeout(f"request body not received within {timeout:g} s") from None
        raise
    finally:
        timers.cancel(task)


class _Expired:
    """Cancels a body read whose timeout passed, and remembers that it did (not the client, not a shutdown)."""

    __slots__ = ("fired",)

    def __init__(self) -> None:
        self.fired = False

    def cancel(self, task: asyncio.Task[Any]) -> None:
        self.fired = True
        task.cancel()
