#!/usr/bin/env bash
# gRPC ModelInfer against OIP v2 REST on one server, in one run, both loaded by h2load (Debian's nghttp2-client):
# gRPC over HTTP/2 with a pre-encoded iris ModelInferRequest, REST over HTTP/1.1 (--h1) with the same
# request as v2 JSON; 1-row and 100-row requests. The runs alternate (ROUNDS of each, in turn) so a noisy
# machine moves both alike; each line is the median req/s of its rounds and the p99 of all their requests
# (h2load's per-request log), and the server's CPU time per request (from /proc, steadier than req/s when
# other work shares the machine). Before the load, one call of each kind is checked to answer every row.
# 'failed' counts HTTP statuses other than 200 and gRPC statuses other than OK (from /metrics).
# The server is pinned to CPU SERVER_CPU, h2load to LOAD_CPU. PROFILE=1 adds a py-spy summary under the
# 1-row gRPC load.
#
#   bench/grpc_h2load.sh REPO [REQUESTS] [CONNECTIONS] [ROUNDS]
set -euo pipefail
REPO=${1:?usage: bench/grpc_h2load.sh REPO [REQUESTS] [CONNECTIONS] [ROUNDS]}
N=${2:-20000}
C=${3:-64}
ROUNDS=${4:-3}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
WORK="${TMPDIR:-/tmp}/ferry-grpc-bench"
rm -rf "$WORK" && mkdir -p "$WORK"
python - "$WORK" <<'PY'
import json, struct, sys
from ferry.grpc import inference_pb2 as pb
for rows in (1, 100):
    values = [1.4, 0.2] * rows
    request = pb.ModelInferRequest(model_name="iris")
    request.inputs.add(name="input", datatype="FP64", shape=[rows, 2]).contents.fp64_contents.extend(values)
    body = request.SerializeToString()
    with open(f"{sys.argv[1]}/iris-{rows}.grpc", "wb") as out:  # gRPC's length-prefixed message
        out.write(b"\x00" + struct.pack(">I", len(body)) + body)
    text = {"inputs": [{"name": "input", "datatype": "FP64", "shape": [rows, 2], "data": values}]}
    with open(f"{sys.argv[1]}/iris-{rows}.json", "w") as out:
        json.dump(text, out, separators=(",", ":"))
PY
port() { python -c "import socket;s=socket.socket();s.bind(('127.0.0.1',0));print(s.getsockname()[1])"; }
HTTP=$(port) GRPC=$(port)
taskset -c "$SERVER_CPU" ferry serve "$REPO" --port "$HTTP" --grpc-port "$GRPC" --probe-port 0 --log-level warning \
    --no-access-log >"$WORK/serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 200); do curl -s "localhost:$HTTP/v2/models/iris/ready" -o /dev/null -w '%{http_code}' | grep -q 200 && break; sleep 0.1; done
python - "$WORK" "$GRPC" "$HTTP" <<'PY'
import json, sys, urllib.request
import grpc
from ferry.grpc import inference_pb2 as pb, inference_pb2_grpc as pb_grpc
work, grpc_port, http_port = sys.argv[1:]
with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
    for rows in (1, 100):
        request = pb.ModelInferRequest.FromString(open(f"{work}/iris-{rows}.grpc", "rb").read()[5:])
        reply = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
        assert len(reply.outputs[0].contents.bytes_contents) == rows, reply
        body = open(f"{work}/iris-{rows}.json", "rb").read()
        post = urllib.request.Request(f"http://127.0.0.1:{http_port}/v2/models/iris/infer", body, {"Content-Type": "application/json"})
        assert len(json.load(urllib.request.urlopen(post))["outputs"][0]["data"]) == rows
PY
load() {  # load TRANSPORT ROWS LOG: h2load's summary line (req/s), its per-request log in LOG
    if [[ $1 == grpc ]]; then
        taskset -c "$LOAD_CPU" h2load -n "$N" -c "$C" -m 1 -d "$WORK/iris-$2.grpc" --log-file="$3" \
            -H 'content-type: application/grpc' -H 'te: trailers' \
            "http://127.0.0.1:$GRPC/inference.GRPCInferenceService/ModelInfer"
    else
        taskset -c "$LOAD_CPU" h2load --h1 -n "$N" -c "$C" -d "$WORK/iris-$2.json" --log-file="$3" \
            -H 'content-type: application/json' "http://127.0.0.1:$HTTP/v2/models/iris/infer"
    fi
}
cpu() { awk '{print $14 + $15}' "/proc/$SERVER/stat"; }  # the server's CPU time so far, in clock ticks
not_ok() {  # gRPC calls answered with a status other than OK so far (h2load sees HTTP 200 for every one)
    curl -s "localhost:$HTTP/metrics" |
        awk '/^ferry_requests_total\{/ && /protocol="grpc"/ && !/status="OK"/ {n += $NF} END {print n + 0}'
}
for transport in grpc rest; do load "$transport" 1 /dev/null >/dev/null; done  # warm-up
for round in $(seq "$ROUNDS"); do
    for rows in 1 100; do
        for transport in grpc rest; do
            before=$(cpu) bad=$(not_ok)
            load "$transport" "$rows" "$WORK/$transport-$rows-$round.log" |
                awk -v f="$WORK/$transport-$rows.rates" '/finished in/ {print $4 >> f} /^requests:/ && $10 != 0 {print "failed:", $0 > "/dev/stderr"}'
            echo $(($(cpu) - before)) >>"$WORK/$transport-$rows.ticks"
            echo $(($(not_ok) - bad)) >>"$WORK/$transport-$rows.bad"
        done
    done
done
python - "$WORK" "$ROUNDS" <<'PY'
import os, statistics, sys
work, rounds = sys.argv[1], int(sys.argv[2])
def figures(transport, rows):
    rates = [float(line) for line in open(f"{work}/{transport}-{rows}.rates")]
    latencies, failed = [], 0
    for r in range(1, rounds + 1):
        for line in open(f"{work}/{transport}-{rows}-{r}.log"):
            _, status, micros = line.split("\t")[:3]
            failed += status != "200"
            latencies.append(int(micros))
    latencies.sort()
    failed += sum(int(float(line)) for line in open(f"{work}/{transport}-{rows}.bad"))  # gRPC statuses not OK
    ticks = sum(int(line) for line in open(f"{work}/{transport}-{rows}.ticks"))
    cpu_us = ticks / os.sysconf("SC_CLK_TCK") * 1e6 / len(latencies)  # the server's CPU per request
    return statistics.median(rates), latencies[int(0.99 * (len(latencies) - 1))] / 1000, failed, cpu_us, rates
print("| rows | gRPC req/s | REST req/s | gRPC/REST | gRPC p99 ms | REST p99 ms | server CPU µs/req gRPC / REST | failed |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|")
for rows in (1, 100):
    g, r = figures("grpc", rows), figures("rest", rows)
    print(
        f"| {rows} | {g[0]:,.0f} | {r[0]:,.0f} | {g[0] / r[0]:.2f}x | {g[1]:.2f} | {r[1]:.2f} "
        f"| {g[3]:.0f} / {r[3]:.0f} | {g[2] + r[2]} |"
    )
for rows in (1, 100):
    g, r = figures("grpc", rows), figures("rest", rows)
    paired = statistics.median(a / b for a, b in zip(g[4], r[4], strict=True))  # each round's pair ran back to back
    print(
        f"rounds, {rows} row(s): gRPC {', '.join(f'{x:,.0f}' for x in g[4])}; REST {', '.join(f'{x:,.0f}' for x in r[4])};"
        f" median of the rounds' gRPC/REST: {paired:.2f}x"
    )
PY
if [[ ${PROFILE:-0} == 1 ]]; then
    N=$((N * 5)) load grpc 1 /dev/null >/dev/null &
    LOAD=$!
    sleep 1
    py-spy record -p "$SERVER" -d 6 -r 250 --format raw -o "$WORK/grpc.raw" >/dev/null 2>&1
    wait "$LOAD"
    python - "$WORK/grpc.raw" <<'PY'
import sys
from collections import Counter
own, total = Counter(), 0
for line in open(sys.argv[1]):
    stack, _, n = line.rstrip().rpartition(" ")
    total += int(n)
    own[stack.split(";")[-1].split(" (")[0]] += int(n)
print(f"\npy-spy under the 1-row gRPC load, {total} samples, own time by function:")
for name, count in own.most_common(15):
    print(f"  {100 * count / total:5.1f}% {name}")
PY
fi
