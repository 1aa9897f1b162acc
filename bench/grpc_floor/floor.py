"""grpcio's own floor: a ModelInfer that answers a fixed reply (no Ferry), on the aio or the sync server.

    python bench/grpc_floor/floor.py aio|aio-uvloop|sync PORT [THREADS]

Load it as bench/grpc_h2load.sh loads Ferry (h2load with a pre-encoded ModelInferRequest).
"""

from __future__ import annotations

import asyncio
import sys
from concurrent import futures
from typing import Any

import grpc

from ferry.grpc import inference_pb2 as pb

REPLY = pb.ModelInferResponse(model_name="iris").SerializeToString()
METHOD = "/inference.GRPCInferenceService/ModelInfer"


def answer(request: bytes, context: Any) -> bytes:
    return REPLY


async def answer_async(request: bytes, context: Any) -> bytes:
    return REPLY


def handlers(function: Any) -> grpc.GenericRpcHandler:
    """The one method, bytes in and bytes out (no (de)serializer: the floor of the transport alone)."""
    method = grpc.unary_unary_rpc_method_handler(function)

    class Handler(grpc.GenericRpcHandler):
        def service(self, details: Any) -> Any:
            return method if details.method == METHOD else None

    return Handler()


def main() -> None:
    mode, port = sys.argv[1], int(sys.argv[2])
    if mode == "sync":
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=int(sys.argv[3]) if len(sys.argv) > 3 else 8))
        server.add_generic_rpc_handlers((handlers(answer),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        server.wait_for_termination()
        return

    async def serve() -> None:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((handlers(answer_async),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    if mode == "aio-uvloop":
        import uvloop

        uvloop.install()
    asyncio.run(serve())


if __name__ == "__main__":
    main()
