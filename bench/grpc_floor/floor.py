"""grpcio's floors: a ModelInfer that answers a fixed reply, on the aio server and on the sync server."""

import asyncio, sys
from concurrent import futures
import grpc
from ferry.grpc import inference_pb2 as pb

REPLY = pb.ModelInferResponse(model_name="iris").SerializeToString()
METHOD = "/inference.GRPCInferenceService/ModelInfer"


def handler_sync(request, context):
    return REPLY


async def handler_aio(request, context):
    return REPLY


def generic(fn):
    h = grpc.unary_unary_rpc_method_handler(fn)  # bytes in, bytes out

    class G(grpc.GenericRpcHandler):
        def service(self, details):
            return h if details.method == METHOD else None

    return G()


port = int(sys.argv[2])
if sys.argv[1] == "sync":
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=int(sys.argv[3]) if len(sys.argv) > 3 else 8))
    server.add_generic_rpc_handlers((generic(handler_sync),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()
else:

    async def main():
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((generic(handler_aio),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    if sys.argv[1] == "aio-uvloop":
        import uvloop

        uvloop.install()
    asyncio.run(main())
