"""The Open Inference v2 gRPC service over the shared service layer.

``inference_pb2*.py`` are generated from ``inference.proto`` by ``scripts/gen-grpc`` and committed, so a plain
``pip install`` works. The messages come from a protoc whose Python output checks no protobuf runtime version,
so they run on every protobuf the official clients allow beside Ferry (5.x to 7.x), and they live in a private
``DescriptorPool``, so other OIP stubs (tritonclient, KServe) can share the process.
"""
