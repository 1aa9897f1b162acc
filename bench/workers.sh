#!/usr/bin/env bash
# --workers scaling on this machine: 1 and 2 workers, unpinned, with wrk on the same machine (as the speed
# issue asks: "2 workers unpinned with the load generator on the same machine, reported honestly").
#
#   bench/workers.sh [REPO]    (default: the iris-only repository bench/run.sh builds)
#
# Prints a markdown table; wrk -t2 -c128 for 10 s after a 3 s warm-up, 1-row iris on the talk's /predict route.
set -euo pipefail
HARNESS="${FERRY_BENCH_HARNESS:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/../shared/bench}"
REPO=${1:-/tmp/peers/ferry-repo}
PORT=18094
FERRY=${FERRY:-ferry}
echo "| workers | req/s @c128 | p99 ms | × 1 worker |"
echo "|---:|---:|---:|---:|"
base=""
for workers in 1 2; do
  "$FERRY" serve "$REPO" --port $PORT --grpc-port 0 --no-access-log --log-level warning --workers $workers >/dev/null 2>&1 &
  pid=$!
  until curl -sf -o /dev/null -d '{"length":5.1,"width":2.4}' "http://127.0.0.1:$PORT/predict"; do sleep 0.2; done
  sleep 1  # every worker up
  wrk -t2 -c128 -d3s -s "$HARNESS/lua/talk.lua" "http://127.0.0.1:$PORT/predict" >/dev/null
  out=$(wrk -t2 -c128 -d10s --latency -s "$HARNESS/lua/talk.lua" "http://127.0.0.1:$PORT/predict")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
  base=${base:-$rps}
  printf '| %s | %s | %s | %.2f |\n' "$workers" "${rps%.*}" "$p99" "$(echo "$rps / $base" | bc -l)"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  sleep 1
done
