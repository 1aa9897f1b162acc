#!/usr/bin/env bash
# Ferry on each supported Python, alternating on one machine so its load falls on every version alike:
# iris native and OIP v2 predict req/s and the server's CPU per request (wrk -c64 on one pinned core, ROUNDS
# rounds), exec -> /ready
# (bench/ready.py, gRPC off and on), and the memory of 1 and 4 workers (bench/pss.py, PSS summed).
#
#   bench/versions.sh [ROUNDS] [VERSIONS...]      e.g. bench/versions.sh 3 3.11 3.12 3.13
#
# Each version runs from its own venv (FERRY_VENVS, default $TMPDIR or /tmp, /ferry-pyVERSION: the one
# scripts/test-python makes), with this checkout installed editable and its bytecode compiled for that
# interpreter (Ferry alone: what an image holds). The examples are built once by the `ferry` on PATH (it needs the
# training stack: scikit-learn, LightGBM). Output: a markdown report on stdout.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROUNDS=${1:-3}
shift || true
VERSIONS=("$@")
[ ${#VERSIONS[@]} -gt 0 ] || VERSIONS=(3.11 3.12 3.13)
WORK="${TMPDIR:-/tmp}/ferry-versions"
rm -rf "$WORK" && mkdir -p "$WORK"
CORE=${FERRY_BENCH_CORE:-1}   # the server's core; wrk runs on the others

venv_of() { echo "${FERRY_VENVS:-${TMPDIR:-/tmp}}/ferry-py$1"; }
for v in "${VERSIONS[@]}"; do
    # scripts/test-python makes the venv and installs Ferry into it (and pytest: `--version` runs no test).
    FERRY_TEST_INSTALL="-e $ROOT pytest" "$ROOT/scripts/test-python" "$v" --version >&2
    "$(venv_of "$v")/bin/python" -m compileall -q "$ROOT/src"
done
ferry examples build "$WORK/examples" >/dev/null   # the training stack of this (the dev) environment
mkdir -p "$WORK/iris" && cp -r "$WORK/examples/iris" "$WORK/iris/"
cat >"$WORK/native.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"length":5.1,"width":2.4}'
wrk.headers["Content-Type"] = "application/json"
LUA
cat >"$WORK/v2.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"inputs":[{"name":"input-0","shape":[1,2],"datatype":"FP64","data":[5.1,2.4]}]}'
wrk.headers["Content-Type"] = "application/json"
LUA
python=$(command -v python3)
free_port() { "$python" -c "import socket;s=socket.socket();s.bind(('127.0.0.1',0));print(s.getsockname()[1])"; }
others=$("$python" -c "import os;print(','.join(str(c) for c in sorted(os.sched_getaffinity(0)) if c != $CORE) or '0')")

throughput() {  # $1 version: one server, both protocols, one row each
    local port pid ferry
    ferry="$(venv_of "$1")/bin/ferry"
    port=$(free_port)
    taskset -c "$CORE" "$ferry" serve "$WORK/iris" --port "$port" --grpc-port 0 --probe-port 0 --log-level warning \
        >"$WORK/serve-$1.log" 2>&1 &
    pid=$!
    for _ in $(seq 300); do curl -sf "localhost:$port/ready" >/dev/null && break; sleep 0.1; done
    for proto in native v2; do
        local path=/models/iris/predict
        [ "$proto" = v2 ] && path=/v2/models/iris/infer
        local before after
        before=$(awk '{print $14 + $15}' "/proc/$pid/stat")  # the server's CPU time, in clock ticks
        taskset -c "$others" wrk -t1 -c64 -d"${WRK_D:-6s}" --latency -s "$WORK/$proto.lua" "http://127.0.0.1:$port$path" \
            >"$WORK/wrk.out"
        after=$(awk '{print $14 + $15}' "/proc/$pid/stat")
        # CPU per request moves far less than req/s with what else the machine runs
        awk -v v="$1" -v p="$proto" -v ticks=$((after - before)) -v hz="$(getconf CLK_TCK)" '
            / requests in / {n=$1} /Requests\/sec/ {rps=$2} / 99%/ {p99=$2}
            END {printf "| %s | %s | %s | %s | %.1f |\n", v, p, rps, p99, ticks / hz * 1e6 / n}' "$WORK/wrk.out"
    done
    kill "$pid" && wait "$pid" 2>/dev/null || true
}

echo "# bench/versions.sh: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "Server pinned to core $CORE, wrk (one thread, 64 connections, ${WRK_D:-6s}) on the others; rounds alternate versions."
echo
echo "| Python | protocol | iris req/s | p99 | server CPU µs/request |"
echo "|---|---|---:|---:|---:|"
for _ in $(seq "$ROUNDS"); do
    for v in "${VERSIONS[@]}"; do throughput "$v"; done
done
echo
echo "## exec -> /ready, iris alone (bench/ready.py, 7 runs each)"
echo
for v in "${VERSIONS[@]}"; do
    echo "Python $v:"
    echo
    "$python" "$ROOT/bench/ready.py" "$WORK/iris" --runs 7 --grpc off on --ferry "$(venv_of "$v")/bin/ferry"
    echo
done
echo "## memory of 1 and 4 workers, the four examples (bench/pss.py)"
echo
for v in "${VERSIONS[@]}"; do
    echo "Python $v:"
    echo
    "$python" "$ROOT/bench/pss.py" "$WORK/examples" --grpc off --ferry "$(venv_of "$v")/bin/ferry" -- --trust-code
    echo
done
