"""Floors of gRPC unary on HTTP/2 libraries, answering a fixed ModelInferResponse (no Ferry servicer).

    python bench/grpc_floor/h2_floor.py h2|grpclib|ferry PORT

h2: python-hyper's h2 state machine on an asyncio Protocol (uvloop); grpclib: its Server (h2 inside), uvloop;
ferry: ferry.grpc.http2's framing with a service answering the fixed reply.
"""

from __future__ import annotations

import asyncio
import struct
import sys
from typing import Any

import uvloop

from ferry.grpc import inference_pb2 as pb

REPLY = pb.ModelInferResponse(model_name="iris").SerializeToString()
FRAMED = b"\x00" + struct.pack(">I", len(REPLY)) + REPLY
HEADERS = [(":status", "200"), ("content-type", "application/grpc")]
TRAILERS = [("grpc-status", "0")]


class H2Floor(asyncio.Protocol):
    def connection_made(self, transport: Any) -> None:
        import h2.config
        import h2.connection

        self.transport = transport
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.conn.initiate_connection()
        transport.write(self.conn.data_to_send())

    def data_received(self, data: bytes) -> None:
        import h2.events

        conn = self.conn
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.DataReceived):
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                sid = event.stream_id
                conn.send_headers(sid, HEADERS)
                conn.send_data(sid, FRAMED)
                conn.send_headers(sid, TRAILERS, end_stream=True)
        out = conn.data_to_send()
        if out:
            self.transport.write(out)


async def serve_h2(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(H2Floor, "127.0.0.1", port)
    await server.serve_forever()


async def serve_grpclib(port: int) -> None:
    import grpclib.const
    import grpclib.server

    async def infer(stream: Any) -> None:
        await stream.recv_message()
        await stream.send_message(REPLY)

    class Service:
        def __mapping__(self) -> dict[str, Any]:
            path = "/inference.GRPCInferenceService/ModelInfer"
            return {path: grpclib.const.Handler(infer, grpclib.const.Cardinality.UNARY_UNARY, None, None)}

    class Raw:
        @staticmethod
        def FromString(data: bytes) -> bytes:
            return data

    async def infer_raw(stream: Any) -> None:
        await stream.recv_message()
        await stream.send_message(REPLY)

    from grpclib.encoding.base import CodecBase

    class BytesCodec(CodecBase):  # type: ignore[misc]
        __content_subtype__ = "proto"

        def encode(self, message: Any, message_type: Any) -> bytes:
            return bytes(message)

        def decode(self, data: bytes, message_type: Any) -> bytes:
            return data

    server = grpclib.server.Server([Service()], codec=BytesCodec())
    await server.start("127.0.0.1", port)
    await server.wait_closed()


async def serve_ferry(port: int) -> None:
    from ferry.grpc.frames import Call, Limits
    from ferry.grpc.http2 import GrpcServer
    from ferry.server.ports import bind_listener

    class Fixed:
        def admit(self, call: Call) -> None:
            pass

        def received(self, call: Call) -> None:
            pass

        async def handle(self, call: Call) -> bytes:
            return REPLY

        def release(self, call: Call) -> None:
            pass

    server = GrpcServer(Fixed(), Limits())
    await server.start(bind_listener("127.0.0.1", port, shared=False, backlog=2048))
    await asyncio.Event().wait()


def main() -> None:
    mode, port = sys.argv[1], int(sys.argv[2])
    uvloop.install()
    serve = {"h2": serve_h2, "grpclib": serve_grpclib, "ferry": serve_ferry}[mode]
    asyncio.run(serve(port))


if __name__ == "__main__":
    main()
