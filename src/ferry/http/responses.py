"""JSON responses and the one place where errors become HTTP."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from ferry.errors import FerryError, PayloadTooLarge

logger = logging.getLogger("ferry.http")

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def json_response(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content, option=_OPTIONS), status, headers, media_type="application/json")


def error_response(exc: Exception) -> Response:
    """A FerryError keeps its status and message; anything else is a 500 whose details stay in the log."""
    if isinstance(exc, FerryError):
        if exc.status >= 500:
            logger.error("%s: %s", exc.code, exc.message, exc_info=exc.__cause__)
        return json_response(exc.to_dict(), exc.status, exc.headers)
    logger.exception("unhandled error", exc_info=exc)
    return json_response({"error": "internal server error", "code": "internal"}, 500)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes, whether or not Content-Length is sent."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
