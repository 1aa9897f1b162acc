"""The Open Inference v2 gRPC service over the shared service layer.

``inference_pb2*.py`` are generated from ``inference.proto`` and committed, so a plain ``pip install`` works:
``python -m grpc_tools.protoc -I src/ferry/grpc --python_out=src/ferry/grpc --grpc_python_out=src/ferry/grpc
inference.proto``, then make the ``inference_pb2`` import in ``inference_pb2_grpc.py``
absolute (``from ferry.grpc import inference_pb2``) and give ``inference_pb2.py`` a private
``DescriptorPool()`` instead of ``Default()``, so other OIP stubs (tritonclient, KServe) can share the process.
"""
