#!/usr/bin/env bash
# What the request pipeline's steps cost: iris native predict req/s with nothing on (plain), with auth
# tokens (auth), through a routes file (routes: POST to the router's name, routed to iris), with
# tracing to a JSON-lines file (tracing: five spans a request) and with tracing on but no span sampled
# (unsampled: OTEL_TRACES_SAMPLER=always_off, what the pipeline's step costs without OpenTelemetry's
# span work), one worker pinned to one core, wrk on the other.
#
#   bench/pipeline.sh [ROUNDS] [BASE_COMMIT] [NEW_COMMIT]
#
# All servers start first and stay up; then, ROUNDS times, a short wrk run against each in turn, so a
# shared machine's load falls on each alike. Each round's ratio to its own plain run is printed, then the
# medians. "new" is this checkout, or NEW_COMMIT; with BASE_COMMIT, that commit runs the same settings in
# the same rounds, labelled base. A commit runs from a git worktree, with the examples it builds itself.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROUNDS=${1:-10}
BASE=${2:-}
NEW=${3:-}
WORK="${TMPDIR:-/tmp}/ferry-pipeline"
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
DURATION=${DURATION:-2s}
rm -rf "$WORK" && mkdir -p "$WORK"
python=$(command -v python)
worktrees=() pids=()
cleanup() {
    kill "${pids[@]}" 2>/dev/null || true
    for tree in "${worktrees[@]}"; do git -C "$ROOT" worktree remove --force "$tree"; done
}
trap cleanup EXIT
checkout() {  # $1 label, $2 commit: $WORK/ferry-$1 runs Ferry from that commit, with its examples in $WORK/ex-$1
    git -C "$ROOT" worktree add -f --detach "$WORK/$1" "$2" >/dev/null
    worktrees+=("$WORK/$1")
    printf '#!%s\nimport sys\nsys.path.insert(0, "%s/%s/src")\nfrom ferry.cli.entry import main\nsys.exit(main())\n' \
        "$python" "$WORK" "$1" >"$WORK/ferry-$1"
    chmod +x "$WORK/ferry-$1"
    "$python" -m compileall -q "$WORK/$1/src"
    "$WORK/ferry-$1" examples build "$WORK/ex-$1" >/dev/null
    mkdir "$WORK/iris-$1" && cp -r "$WORK/ex-$1/iris" "$WORK/iris-$1/"
}
if [[ -n "$NEW" ]]; then
    checkout new "$NEW"
else
    ln -s "$(command -v ferry)" "$WORK/ferry-new"
    ferry examples build "$WORK/ex-new" >/dev/null
    mkdir "$WORK/iris-new" && cp -r "$WORK/ex-new/iris" "$WORK/iris-new/"
fi
versions=(new)
if [[ -n "$BASE" ]]; then
    checkout base "$BASE"
    versions=(base new)
fi
cat >"$WORK/routes.yaml" <<'YAML'
name: router
rules:
  - name: beta
    match: {headers: {x-beta: {present: true}}}
    to: {model: iris, version: "1"}
default:
  to: {model: iris}
YAML
lua() {  # $1 name, $2 extra header line (lua) or ""
    printf 'wrk.method = "POST"\nwrk.body = %s\nwrk.headers["Content-Type"] = "application/json"\n%s\n' \
        "'{\"length\":5.1,\"width\":2.4}'" "$2" >"$WORK/$1.lua"
}
lua plain ""
lua auth 'wrk.headers["Authorization"] = "Bearer s3cret"'
free_port() { "$python" -c "import socket;s=socket.socket();s.bind(('127.0.0.1',0));print(s.getsockname()[1])"; }
declare -A PORT=() PATHS=() SCRIPT=()
start() {  # $1 version, $2 setting: a server, left running for every round
    local ferry_cmd repo port path=/models/iris/predict script=plain flags=() sampler=parentbased_always_on
    ferry_cmd="$WORK/ferry-$1" repo="$WORK/iris-$1"  # iris alone: the class example would need --trust-code
    case $2 in
        auth) flags=(--auth-tokens s3cret) script=auth ;;
        routes) flags=(--routes "$WORK/routes.yaml") path=/models/router/predict ;;
        tracing) flags=(--tracing "$WORK/spans-$1.jsonl") ;;
        unsampled) flags=(--tracing "$WORK/unsampled-$1.jsonl") sampler=always_off ;;
    esac
    port=$(free_port)
    OTEL_TRACES_SAMPLER=$sampler taskset -c "$SERVER_CPU" $ferry_cmd serve "$repo" --port "$port" --grpc-port 0 --probe-port 0 \
        --log-level warning "${flags[@]}" >"$WORK/$1-$2.log" 2>&1 &
    pids+=($!)
    PORT[$1-$2]=$port PATHS[$1-$2]=$path SCRIPT[$1-$2]=$script
}
throughput() {  # $1 version, $2 setting -> req/s of one short wrk run against its running server
    local key=$1-$2
    taskset -c "$CLIENT_CPU" wrk -t1 -c32 -d"$DURATION" -s "$WORK/${SCRIPT[$key]}.lua" \
        "http://127.0.0.1:${PORT[$key]}${PATHS[$key]}" | awk '/Requests\/sec/ {print $2}'
}
SETTINGS=(plain auth routes tracing unsampled)
for version in "${versions[@]}"; do
    for setting in "${SETTINGS[@]}"; do start "$version" "$setting"; done
done
for key in "${!PORT[@]}"; do
    for _ in $(seq 300); do curl -sf "localhost:${PORT[$key]}/ready" >/dev/null && break; sleep 0.1; done
    code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' -H 'Authorization: Bearer s3cret' \
        -d '{"length":5.1,"width":2.4}' "localhost:${PORT[$key]}${PATHS[$key]}")
    [[ $code == 200 ]] || { echo "$key: ${PATHS[$key]} answered $code" >&2; exit 1; }
    taskset -c "$CLIENT_CPU" wrk -t1 -c32 -d1s -s "$WORK/${SCRIPT[$key]}.lua" \
        "http://127.0.0.1:${PORT[$key]}${PATHS[$key]}" >/dev/null  # warm-up
done
echo "# bench/pipeline.sh: $(date -u '+%Y-%m-%d %H:%M UTC'), ${NEW:-$(git -C "$ROOT" rev-parse --short HEAD)}${BASE:+ against $BASE}," \
    "load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "iris native predict; every server started first, each pinned to core $SERVER_CPU (one worker); then, each round,"
echo "wrk -t1 -c32 -d$DURATION on core $CLIENT_CPU against each in turn."
echo
echo "| round | version | plain req/s | auth | routes | tracing | unsampled | auth/plain | routes/plain | tracing/plain | unsampled/plain |"
echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
ratios="$WORK/ratios.tsv"
: >"$ratios"
for round in $(seq "$ROUNDS"); do
    for version in "${versions[@]}"; do
        declare -A rps=()
        for setting in "${SETTINGS[@]}"; do
            rps[$setting]=$(throughput "$version" "$setting")
        done
        line=$(awk -v p="${rps[plain]}" -v a="${rps[auth]}" -v r="${rps[routes]}" -v t="${rps[tracing]}" \
            -v u="${rps[unsampled]}" 'BEGIN {printf "%.3f\t%.3f\t%.3f\t%.3f", a/p, r/p, t/p, u/p}')
        printf '%s\t%s\t%s\n' "$version" "$line" "${rps[plain]}" >>"$ratios"
        IFS=$'\t' read -r ra rr rt ru <<<"$line"
        echo "| $round | $version | ${rps[plain]} | ${rps[auth]} | ${rps[routes]} | ${rps[tracing]} | ${rps[unsampled]} |" \
            "$ra | $rr | $rt | $ru |"
    done
done
echo
echo "Median ratio to plain over the rounds:"
echo
for version in "${versions[@]}"; do
    "$python" - "$ratios" "$version" <<'PY'
import statistics, sys
rows = [line.split("\t") for line in open(sys.argv[1]) if line.startswith(sys.argv[2] + "\t")]
auth, routes, tracing, unsampled, plain = ([float(r[i]) for r in rows] for i in (1, 2, 3, 4, 5))
print(f"- {sys.argv[2]}: plain {statistics.median(plain):,.0f} req/s; auth {statistics.median(auth):.2f}x, "
      f"routes {statistics.median(routes):.2f}x, tracing {statistics.median(tracing):.2f}x, "
      f"tracing unsampled {statistics.median(unsampled):.2f}x ({len(rows)} rounds)")
PY
done
