#!/usr/bin/env bash
# Floors of a gRPC unary ModelInfer answering a fixed reply (no Ferry servicer), on one pinned core, loaded by
# h2load as bench/grpc_h2load.sh loads Ferry (1-row iris, pre-encoded): grpcio's aio server on uvloop, python-hyper's
# h2 and grpclib on uvloop, and Ferry's own framing (ferry.grpc.http2). ROUNDS alternating rounds; median req/s.
#
#   bench/grpc_floor/floors.sh [REQUESTS] [CONNECTIONS] [ROUNDS]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
N=${1:-20000}
C=${2:-64}
ROUNDS=${3:-3}
WORK="${TMPDIR:-/tmp}/ferry-grpc-floors"
rm -rf "$WORK" && mkdir -p "$WORK"
python - "$WORK/iris.grpc" <<'PY'
import struct, sys
from ferry.grpc import inference_pb2 as pb
request = pb.ModelInferRequest(model_name="iris")
request.inputs.add(name="input", datatype="FP64", shape=[1, 2]).contents.fp64_contents.extend([1.4, 0.2])
body = request.SerializeToString()
open(sys.argv[1], "wb").write(b"\x00" + struct.pack(">I", len(body)) + body)
PY
port() { python -c "import socket;s=socket.socket();s.bind(('127.0.0.1',0));print(s.getsockname()[1])"; }
floor() {  # floor NAME PORT: start it, load it, stop it
    local name=$1 p=$2 server
    if [[ $name == grpcio ]]; then
        taskset -c 0 python "$HERE/floor.py" aio-uvloop "$p" >/dev/null 2>&1 &
    else
        taskset -c 0 python "$HERE/h2_floor.py" "$name" "$p" >/dev/null 2>&1 &
    fi
    server=$!
    for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/"$p") 2>/dev/null && break; sleep 0.05; done
    taskset -c 1 h2load -n "$N" -c "$C" -m 1 -d "$WORK/iris.grpc" -H 'content-type: application/grpc' \
        -H 'te: trailers' "http://127.0.0.1:$p/inference.GRPCInferenceService/ModelInfer" |
        awk -v f="$WORK/$name.rates" '/finished in/ {print $4 >> f} /^requests:/ && $10 != 0 {print "failed:", $0 > "/dev/stderr"}'
    kill "$server"
    wait "$server" 2>/dev/null || true
}
for _ in $(seq "$ROUNDS"); do
    for name in grpcio h2 grpclib ferry; do floor "$name" "$(port)"; done
done
python - "$WORK" <<'PY'
import statistics, sys
print("| server (fixed reply) | req/s (median) | rounds |")
print("|---|---:|---|")
for name in ("grpcio", "h2", "grpclib", "ferry"):
    rates = [float(x) for x in open(f"{sys.argv[1]}/{name}.rates")]
    print(f"| {name} | {statistics.median(rates):,.0f} | {', '.join(f'{r:,.0f}' for r in rates)} |")
PY
