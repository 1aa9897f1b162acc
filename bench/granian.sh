#!/usr/bin/env bash
# Issue 25: Ferry's request pipeline behind granian's RSGI interface (bench/granian_pipeline.py) against
# `ferry serve` (uvicorn + Ferry's connection layer and lane), iris native predict and v2 infer, in one run.
#
#   bench/granian.sh [ROUNDS]
#
# Every server starts first and stays up, each pinned to core $SERVER_CPU (one worker; granian with one
# runtime thread and one blocking thread, uvloop, in each --runtime-mode: st and mt); then, ROUNDS times,
# for each route, a short wrk -c64 run against each server in turn, wrk pinned to core $CLIENT_CPU, so a
# shared machine's load falls on each alike. Each round prints req/s and p99 per server and its ratio to
# ferry serve's run in the same round; then the medians. Needs granian installed (pip install granian).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROUNDS=${1:-8}
WORK="${TMPDIR:-/tmp}/ferry-granian"
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
DURATION=${DURATION:-3s}
CONNECTIONS=${CONNECTIONS:-64}
rm -rf "$WORK" && mkdir -p "$WORK"
python=$(command -v python)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; }
trap cleanup EXIT
ferry examples build "$WORK/ex" >/dev/null 2>&1
mkdir "$WORK/iris" && cp -r "$WORK/ex/iris" "$WORK/iris/"  # iris alone, as bench/pipeline.sh serves it
printf 'wrk.method = "POST"\nwrk.body = %s\nwrk.headers["Content-Type"] = "application/json"\n' \
    "'{\"length\":5.1,\"width\":2.4}'" >"$WORK/native.lua"
printf 'wrk.method = "POST"\nwrk.body = %s\nwrk.headers["Content-Type"] = "application/json"\n' \
    "'{\"inputs\": [{\"name\": \"input-0\", \"shape\": [1, 2], \"datatype\": \"FP64\", \"data\": [5.1, 2.4]}]}'" \
    >"$WORK/v2.lua"  # as /work/shared/bench/lua/v2.lua
declare -A PATHS=([native]=/models/iris/predict [v2]=/v2/models/iris/infer)
free_port() { "$python" -c "import socket;s=socket.socket();s.bind(('127.0.0.1',0));print(s.getsockname()[1])"; }
declare -A PORT=()
SERVERS=(ferry granian-st granian-mt)
for server in "${SERVERS[@]}"; do
    port=$(free_port)
    PORT[$server]=$port
    case $server in
        ferry)
            taskset -c "$SERVER_CPU" ferry serve "$WORK/iris" --port "$port" --grpc-port 0 --probe-port 0 \
                --log-level warning >"$WORK/$server.log" 2>&1 &
            ;;
        granian-*)
            FERRY_REPO="$WORK/iris" FERRY_LOG_LEVEL=warning taskset -c "$SERVER_CPU" \
                granian --interface rsgi --host 127.0.0.1 --port "$port" --workers 1 --http 1 \
                --runtime-mode "${server#granian-}" --runtime-threads 1 --blocking-threads 1 --loop uvloop \
                --no-access-log --log-level warning --working-dir "$ROOT" bench/granian_pipeline.py:app \
                >"$WORK/$server.log" 2>&1 &
            ;;
    esac
    pids+=($!)
done
for server in "${SERVERS[@]}"; do
    for route in native v2; do
        url="http://127.0.0.1:${PORT[$server]}${PATHS[$route]}"
        for _ in $(seq 600); do curl -s -o /dev/null "$url" && break; sleep 0.1; done
        body=$(sed -n "s/^wrk.body = '\(.*\)'$/\1/p" "$WORK/$route.lua")
        code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' -d "$body" "$url")
        [[ $code == 200 ]] || { echo "$server: $url answered $code" >&2; cat "$WORK/$server.log" >&2; exit 1; }
        taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNECTIONS" -d1s -s "$WORK/$route.lua" "$url" >/dev/null  # warm-up
    done
done
measure() {  # $1 server, $2 route -> "req/s p99_ms errors" of one wrk run
    taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency -s "$WORK/$2.lua" \
        "http://127.0.0.1:${PORT[$1]}${PATHS[$2]}" | awk '
        function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
        /Requests\/sec/ {rps = $2} / 99%/ {p99 = ms($2)} /Non-2xx|Socket errors/ {err = err $0 ";"}
        END {printf "%s %.2f %s\n", rps, p99, (err == "" ? "-" : "x")}'
}
echo "# bench/granian.sh: $(date -u '+%Y-%m-%d %H:%M UTC'), $(git -C "$ROOT" rev-parse --short HEAD)," \
    "granian $("$python" -c 'import granian; print(granian.__version__)'), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "iris, one worker per server pinned to core $SERVER_CPU; each round, wrk -t1 -c$CONNECTIONS -d$DURATION on core" \
    "$CLIENT_CPU against each server in turn. ratio: req/s over ferry serve's in the same round (errors: x)."
echo
echo "| round | route | ferry req/s | p99 ms | granian st req/s | p99 ms | ratio | granian mt req/s | p99 ms | ratio |"
echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
rows="$WORK/rows.tsv"
: >"$rows"
for round in $(seq "$ROUNDS"); do
    for route in native v2; do
        declare -A rps=() p99=() err=()
        # The order turns each round, so neither server always runs first after the other's load.
        order=("${SERVERS[@]}")
        ((round % 2 == 0)) && order=(granian-mt granian-st ferry)
        for server in "${order[@]}"; do
            read -r rps[$server] p99[$server] err[$server] <<<"$(measure "$server" "$route")"
        done
        st=$(awk -v a="${rps[granian-st]}" -v b="${rps[ferry]}" 'BEGIN {printf "%.3f", a/b}')
        mt=$(awk -v a="${rps[granian-mt]}" -v b="${rps[ferry]}" 'BEGIN {printf "%.3f", a/b}')
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$route" "${rps[ferry]}" "${p99[ferry]}" "${rps[granian-st]}" \
            "${p99[granian-st]}" "$st" "${rps[granian-mt]}" "${p99[granian-mt]}" >>"$rows"
        printf '%s\n' "$mt" >>"$rows.mt"
        flag() { [[ ${err[$1]} == - ]] || printf ' (x)'; }
        echo "| $round | $route | ${rps[ferry]}$(flag ferry) | ${p99[ferry]} | ${rps[granian-st]}$(flag granian-st) |" \
            "${p99[granian-st]} | $st | ${rps[granian-mt]}$(flag granian-mt) | ${p99[granian-mt]} | $mt |"
    done
done
echo
echo "Medians over the rounds:"
echo
paste "$rows" "$rows.mt" | "$python" -c '
import statistics, sys
rows = [line.rstrip("\n").split("\t") for line in sys.stdin]
for route in ("native", "v2"):
    mine = [r for r in rows if r[0] == route]
    med = lambda i: statistics.median(float(r[i]) for r in mine)
    print(f"- {route}: ferry serve {med(1):,.0f} req/s, p99 {med(2):.1f} ms; granian st {med(3):,.0f} req/s, "
          f"p99 {med(4):.1f} ms, ratio {med(5):.2f}x; granian mt {med(6):,.0f} req/s, p99 {med(7):.1f} ms, "
          f"ratio {med(8):.2f}x ({len(mine)} rounds)")
'
