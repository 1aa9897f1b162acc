#!/usr/bin/env bash
# This checkout against an earlier commit, alternating on one machine, so the machine's load falls on both:
# iris native predict req/s (wrk -c64, three rounds) and exec -> /ready (bench/ready.py, gRPC off and on).
#
#   bench/ab.sh BASE_COMMIT [ROUNDS]
#
# The base runs from a git worktree in $TMPDIR (its own bytecode compiled first), each version with the
# examples it builds itself (a newer manifest may hold fields an older Ferry refuses).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BASE=${1:?usage: bench/ab.sh BASE_COMMIT [ROUNDS]}
ROUNDS=${2:-3}
WORK="${TMPDIR:-/tmp}/ferry-ab"
rm -rf "$WORK" && mkdir -p "$WORK"
git -C "$ROOT" worktree add -f --detach "$WORK/base" "$BASE" >/dev/null
trap 'git -C "$ROOT" worktree remove --force "$WORK/base"' EXIT
python=$(command -v python)
printf '#!%s\nimport sys\nsys.path.insert(0, "%s/base/src")\nfrom ferry.cli.entry import main\nsys.exit(main())\n' \
    "$python" "$WORK" >"$WORK/ferry-base"
chmod +x "$WORK/ferry-base"
"$python" -m compileall -q "$WORK/base/src"
"$WORK/ferry-base" examples build "$WORK/ex-base" >/dev/null
ferry examples build "$WORK/ex-new" >/dev/null
cat >"$WORK/iris.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"length":5.1,"width":2.4}'
wrk.headers["Content-Type"] = "application/json"
LUA
free_port() { "$python" -c "import socket;s=socket.socket();s.bind(('127.0.0.1',0));print(s.getsockname()[1])"; }
throughput() {  # $1 ferry command, $2 repository, $3 label
    local port pid
    port=$(free_port)
    $1 serve "$2" --port "$port" --grpc-port 0 --probe-port 0 --log-level warning >"$WORK/$3.log" 2>&1 &
    pid=$!
    for _ in $(seq 200); do curl -sf "localhost:$port/ready" >/dev/null && break; sleep 0.1; done
    wrk -t2 -c64 -d6s -s "$WORK/iris.lua" "http://127.0.0.1:$port/models/iris/predict" |
        awk -v l="$3" '/Requests\/sec/ {print "| " l " | " $2 " |"}'
    kill "$pid" && wait "$pid" 2>/dev/null || true
}
echo "# bench/ab.sh $BASE: $(date -u '+%Y-%m-%d %H:%M UTC'), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| version | iris req/s (wrk -c64, 6 s) |"
echo "|---|---:|"
for _ in $(seq "$ROUNDS"); do
    throughput "$WORK/ferry-base" "$WORK/ex-base" base
    throughput ferry "$WORK/ex-new" new
done
mkdir -p "$WORK/iris-base" "$WORK/iris-new"
cp -r "$WORK/ex-base/iris" "$WORK/iris-base/" && cp -r "$WORK/ex-new/iris" "$WORK/iris-new/"
echo
for _ in 1 2; do
    "$python" "$ROOT/bench/ready.py" "$WORK/iris-base" --runs 5 --grpc off on --ferry "$WORK/ferry-base" | grep iris-base
    "$python" "$ROOT/bench/ready.py" "$WORK/iris-new" --runs 5 --grpc off on | grep iris-new
done
