#!/usr/bin/env bash
# gRPC ModelInfer against OIP v2 REST on one server, in one run: h2load (Debian's nghttp2-client) sends a
# pre-encoded 1-row iris ModelInferRequest; wrk sends the same request as v2 JSON. Optionally profiles the
# server under the gRPC load with py-spy (PROFILE=1), summarised by function.
#
#   bench/grpc_h2load.sh REPO [REQUESTS] [CONNECTIONS]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REPO=${1:?usage: bench/grpc_h2load.sh REPO [REQUESTS] [CONNECTIONS]}
N=${2:-20000}
C=${3:-64}
WORK="${TMPDIR:-/tmp}/ferry-grpc-bench"
mkdir -p "$WORK"
python - "$WORK/iris.grpc" <<'PY'
import struct, sys
from ferry.grpc import inference_pb2 as pb
request = pb.ModelInferRequest(model_name="iris")
tensor = request.inputs.add(name="input", datatype="FP64", shape=[1, 2])
tensor.contents.fp64_contents.extend([1.4, 0.2])
body = request.SerializeToString()
open(sys.argv[1], "wb").write(b"\x00" + struct.pack(">I", len(body)) + body)  # gRPC's length-prefixed frame
PY
cat >"$WORK/v2.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"inputs":[{"name":"input","datatype":"FP64","shape":[1,2],"data":[1.4,0.2]}]}'
wrk.headers["Content-Type"] = "application/json"
LUA
port() { python -c "import socket;s=socket.socket();s.bind(('127.0.0.1',0));print(s.getsockname()[1])"; }
HTTP=$(port) GRPC=$(port)
ferry serve "$REPO" --port "$HTTP" --grpc-port "$GRPC" --probe-port 0 --log-level warning >"$WORK/serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 200); do curl -s "localhost:$HTTP/v2/models/iris/ready" -o /dev/null -w '%{http_code}' | grep -q 200 && break; sleep 0.1; done
grpc_load() {
    h2load -n "$N" -c "$C" -m 1 -d "$WORK/iris.grpc" -H 'content-type: application/grpc' -H 'te: trailers' \
        "http://127.0.0.1:$GRPC/inference.GRPCInferenceService/ModelInfer"
}
echo "| transport | req/s | detail |"
echo "|---|---:|---|"
grpc_load | awk '/finished in/ {rate=$4} /^requests:/ {ok=$8} END {print "| gRPC ModelInfer (h2load) | " rate " | " ok " succeeded |"}'
wrk -t2 -c"$C" -d6s -s "$WORK/v2.lua" "http://127.0.0.1:$HTTP/v2/models/iris/infer" |
    awk '/Requests\/sec/ {print "| v2 REST infer (wrk) | " $2 " | |"}'
if [[ ${PROFILE:-0} == 1 ]]; then
    grpc_load >/dev/null &
    sleep 1
    py-spy record -p "$SERVER" -d 8 -r 250 --format raw -o "$WORK/grpc.raw" >/dev/null 2>&1
    python - "$WORK/grpc.raw" <<'PY'
import sys
from collections import Counter
own, total = Counter(), 0
for line in open(sys.argv[1]):
    stack, _, n = line.rstrip().rpartition(" ")
    total += int(n)
    own[stack.split(";")[-1].split(" (")[0]] += int(n)
print(f"\npy-spy under the gRPC load, {total} samples, own time by function:")
for name, count in own.most_common(10):
    print(f"  {100 * count / total:5.1f}% {name}")
PY
fi
