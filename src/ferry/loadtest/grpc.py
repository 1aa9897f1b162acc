"""The gRPC transport of ``ferry loadtest --protocol grpc``: Open Inference ``ModelInfer``, bodies encoded once.

Each record is shaped as an OIP v2 request (the same shaping as ``--protocol v2``), then serialised
once to a ``ModelInferRequest`` with typed contents (``ferry.loadtest.protocols.encode_infer``); the
generator sends those bytes as they are.
A gRPC status is counted as its HTTP equivalent (OK 200, INVALID_ARGUMENT 400, NOT_FOUND 404,
RESOURCE_EXHAUSTED 429, UNAVAILABLE 503, DEADLINE_EXCEEDED 504, ...), so reports and SLA gates
read the same whatever the protocol, and the error kind names the gRPC code.
"""

from __future__ import annotations

import grpc

from ferry.loadtest.protocols import METHOD_PATH

HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


class GrpcTransport:
    """One channel (HTTP/2 multiplexes every call over it); ``send`` answers (status, error kind)."""

    def __init__(self, target: str, timeout: float) -> None:
        self.channel = grpc.aio.insecure_channel(target)
        # No serialisers: the bodies are already ModelInferRequest bytes, and replies are not parsed.
        self.infer = self.channel.unary_unary(METHOD_PATH)
        self.timeout = timeout

    async def send(self, body: bytes) -> tuple[int | None, str | None]:
        try:
            await self.infer(body, timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code is grpc.StatusCode.DEADLINE_EXCEEDED:
                return None, "timeout"
            if code is grpc.StatusCode.UNAVAILABLE and "connect" in (exc.details() or "").lower():
                return None, "connection refused"
            return HTTP_STATUS.get(code, 500), f"grpc {code.name}"
        return 200, None

    async def close(self) -> None:
        await self.channel.close()
