#!/usr/bin/env bash
# Ferry vs a hand-written Flask + gunicorn app on the other example models, not only iris.
#
#   bench/examples.sh [--no-install] [--no-profile] [--sat-d 10s] [--lat-d 10s] [--models iris,diabetes,reviews,general]
#
# Builds the examples (`ferry examples build DIR` and `ferry examples build DIR --images`) into one
# repository, then serves it two ways, one at a time, each as ONE worker pinned to CPU 1:
#   ferry  : ferry serve DIR --port 18750 --grpc-port 0 --no-access-log --log-level warning --trust-code
#   flask  : gunicorn -w 1 -k sync bench/flask_examples/app.py (as the harness's flask-gunicorn peer),
#            loading the same artifacts with skops / lightgbm / onnxruntime + Pillow by hand
# Before any timing both servers answer each sample and the predictions are compared (printed).
# Per model: wrk -t1 pinned to CPU 0, 3 s warm-up at 64 connections, 10 s at 64 connections
# (1-row requests; req/s, p99), 10 s at 1 connection (p50). Bodies: bench/lua/<model>.lua.
# Then, for each model where ferry is less than 5x Flask's req/s, ferry is profiled with py-spy
# (--gil, 8 s under the same 64-connection load) and the profile is appended to the report.
# Output: bench/results/examples-<YYYY-MM-DD-HHMM>/ (report.md, raw wrk output, checks, logs).
#
# Flask's venv: /tmp/flask-examples (FLASK_VENV), created here with the same library versions as
# the Python that runs ferry. Ferry: the `ferry` script of python3's installation (FERRY_PY / FERRY to override).
set -euo pipefail
set +m

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FERRY_PY=${FERRY_PY:-$(python3 -c 'import sys; print(sys.executable)')}   # the Python ferry is installed in
FERRY=${FERRY:-$(dirname "$FERRY_PY")/ferry}
VENV=${FLASK_VENV:-/tmp/flask-examples}
REPO=${EXAMPLES_REPO:-/tmp/ferry-examples-bench}
SERVER_CPU=${SERVER_CPU:-1}
CLIENT_CPU=${CLIENT_CPU:-0}
WARM_D=3s; SAT_C=64; SAT_D=10s; LAT_D=10s; WRK_TIMEOUT=10s
MODELS="iris,diabetes,reviews,general"
INSTALL=1
PROFILE=1; PROFILE_BELOW=5   # py-spy profile of ferry for every model whose req/s ratio is below this
FERRY_PORT=18750; FLASK_PORT=18751
while [[ $# -gt 0 ]]; do
  case $1 in
    --no-install) INSTALL=0; shift ;;
    --no-profile) PROFILE=0; shift ;;
    --sat-d) SAT_D=$2; shift 2 ;;
    --lat-d) LAT_D=$2; shift 2 ;;
    --models) MODELS=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
IFS=',' read -r -a MODEL_LIST <<<"$MODELS"
LUA="$ROOT/bench/lua"
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

for tool in wrk curl taskset; do command -v $tool >/dev/null || die "$tool is missing"; done
[[ -x $FERRY ]] || die "no ferry at $FERRY (set FERRY_PY or FERRY)"

# Another benchmark loads the same two CPUs: wait for it (at most 10 minutes).
for ((i = 0; i < 120; i++)); do
  pgrep -x wrk >/dev/null || break
  ((i == 0)) && log "another wrk is running ($(pgrep -x wrk | paste -sd,)); waiting"
  sleep 5
done
pgrep -x wrk >/dev/null && die "another wrk is still running"

OUT="$ROOT/bench/results/examples-$(date +%Y-%m-%d-%H%M)"
mkdir -p "$OUT/raw" "$OUT/logs"
log "results -> $OUT"

# --- the Flask app's venv: flask + gunicorn as pinned by the harness, ML libraries as ferry's Python has them
if [[ $INSTALL == 1 ]]; then
  pins=$("$FERRY_PY" - <<'EOF'
from importlib.metadata import version
print(" ".join(f"{p}=={version(p)}" for p in
      ["scikit-learn", "numpy", "scipy", "lightgbm", "onnxruntime", "skops", "pillow", "pyyaml"]))
EOF
)
  [[ -x $VENV/bin/python ]] || python3 -m venv "$VENV"
  log "flask venv $VENV: flask==3.1.3 gunicorn==27.0.1 $pins"
  "$VENV/bin/pip" install -q flask==3.1.3 gunicorn==27.0.1 $pins >"$OUT/logs/pip-install.log" 2>&1 \
    || die "pip install failed (see $OUT/logs/pip-install.log)"
fi
"$VENV/bin/python" -c "import flask, gunicorn, sklearn, lightgbm, onnxruntime, skops, PIL, yaml" || die "flask venv incomplete"

# --- the examples, built by ferry
log "building the examples into $REPO"
rm -rf "$REPO"
"$FERRY" examples build "$REPO" >"$OUT/logs/build.log" 2>&1 || die "ferry examples build failed"
"$FERRY" examples build "$REPO" --images >>"$OUT/logs/build.log" 2>&1 || die "ferry examples build --images failed"
libs() { # python package... -> "name==version ..."
  "$1" -c 'import sys; from importlib.metadata import version
print(" ".join(f"{p}=={version(p)}" for p in sys.argv[1:]))' "${@:2}"
}
{
  echo "date: $(date -Is)"
  echo "ferry commit: $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- src 2>/dev/null || echo ' (src/ has uncommitted changes)')"
  echo "ferry python: $FERRY_PY"
  echo "ferry python libs: $(libs "$FERRY_PY" ferry msgspec uvloop numpy scikit-learn lightgbm onnxruntime skops pillow)"
  echo "flask venv libs: $(libs "$VENV/bin/python" flask werkzeug gunicorn numpy scikit-learn lightgbm onnxruntime skops pillow)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) CPUs"
} >"$OUT/versions.txt"

body() { sed -n "s/^wrk.body = '\(.*\)'$/\1/p" "$LUA/$1.lua"; }
# The image body is embedded in general.lua: it must still be the bundle's own sample.
"$FERRY_PY" - "$REPO/general/1/ferry.yaml" "$(body general)" <<'EOF' || die "bench/lua/general.lua no longer holds the general bundle's sample_input; regenerate it"
import json, sys, yaml
sample = yaml.safe_load(open(sys.argv[1]))["sample_input"]["image_data"]
sys.exit(0 if json.loads(sys.argv[2])["image_data"] == sample else 1)
EOF

# --- process control: each server runs in its own session, pinned to SERVER_CPU
PIDS=()
start() { # name port -> pid in STARTED
  local name=$1 port=$2
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then die "port $port is already in use"; fi
  case $name in
    # --trust-code: the examples' `score` identity class is Ferry's own code.
    ferry) setsid taskset -c "$SERVER_CPU" "$FERRY" serve "$REPO" --port "$port" --grpc-port 0 \
             --no-access-log --log-level warning --trust-code >>"$OUT/logs/ferry.log" 2>&1 </dev/null & ;;
    flask) EXAMPLES_DIR="$REPO" setsid taskset -c "$SERVER_CPU" "$VENV/bin/gunicorn" -w 1 -k sync \
             -b "127.0.0.1:$port" --pythonpath "$ROOT/bench/flask_examples" app:app \
             >>"$OUT/logs/flask.log" 2>&1 </dev/null & ;;
  esac
  STARTED=$!
  PIDS+=("$STARTED")
  local t0=$SECONDS
  until [[ $(curl -s -m 5 -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' \
              --data-binary "$(body iris)" "http://127.0.0.1:$port/models/iris/predict") == 200 ]]; do
    kill -0 "$STARTED" 2>/dev/null || { tail -20 "$OUT/logs/$name.log" >&2; die "$name exited during startup"; }
    ((SECONDS - t0 < 120)) || die "$name not ready after 120 s"
    sleep 0.5
  done
  log "$name ready after $((SECONDS - t0)) s (pid $STARTED, affinity $(taskset -pc "$STARTED" | awk '{print $NF}'))"
}
stop() { # pid
  local pid=$1 i
  kill -TERM -- "-$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() { local p; for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && stop "$p"; done; return 0; }
trap cleanup EXIT
trap 'exit 130' INT TERM

ask() { # port model -> reply body
  curl -sS -m 10 -H 'Content-Type: application/json' --data-binary "$(body "$2")" "http://127.0.0.1:$1/models/$2/predict"
}

# --- correctness first: both up, same sample, same prediction
log "checking predictions (both servers, same samples)"
start ferry $FERRY_PORT; FERRY_PID=$STARTED
start flask $FLASK_PORT; FLASK_PID=$STARTED
for m in "${MODEL_LIST[@]}"; do
  printf '%s\t%s\t%s\n' "$m" "$(ask $FERRY_PORT "$m")" "$(ask $FLASK_PORT "$m")"
done >"$OUT/replies.tsv"
stop "$FERRY_PID"; stop "$FLASK_PID"
"$FERRY_PY" - "$OUT/replies.tsv" <<'EOF' | tee "$OUT/checks.txt" >&2 || die "the two servers disagree (see $OUT/checks.txt)"
import json, math, sys

def same(a, b):
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
    return a == b

bad = 0
for line in open(sys.argv[1], encoding="utf-8"):
    model, ferry, flask = line.rstrip("\n").split("\t")
    try:
        ok = same(json.loads(ferry), json.loads(flask))
    except ValueError:
        ok = False
    bad += not ok
    print(f"{model:9s} {'same' if ok else 'DIFFERENT'}\n  ferry: {ferry}\n  flask: {flask}")
sys.exit(1 if bad else 0)
EOF

# --- timing: one server at a time
run_wrk() { # server model test conns duration port
  local raw="$OUT/raw/$1-$2-$3.txt"
  taskset -c "$CLIENT_CPU" wrk -t1 -c"$4" -d"$5" --timeout "$WRK_TIMEOUT" --latency -s "$LUA/$2.lua" \
    "http://127.0.0.1:$6/models/$2/predict" >"$raw" 2>&1
  [[ $3 == warm ]] && return 0
  log "  $2 $3 (c$4): $(awk '/Requests\/sec/ {r=$2} /^ +50%/ {p50=$2} /^ +99%/ {p99=$2} /Non-2xx/ {e=" non-2xx " $NF} /Socket errors/ {s=" " $0} END {print r " req/s, p50 " p50 ", p99 " p99 e s}' "$raw")"
}
for server in ferry flask; do
  port=$FERRY_PORT; [[ $server == flask ]] && port=$FLASK_PORT
  log "timing $server"
  start $server $port; pid=$STARTED
  rss=$(ps -o rss= -p "$pid,$(pgrep -d, -P "$pid" || echo "$pid")" | awk '{s+=$1} END {printf "%.0f", s/1024}')
  echo "$server rss_mib $rss" >>"$OUT/rss.txt"
  for m in "${MODEL_LIST[@]}"; do
    run_wrk $server "$m" warm $SAT_C $WARM_D $port
    run_wrk $server "$m" sat $SAT_C "$SAT_D" $port
    run_wrk $server "$m" lat 1 "$LAT_D" $port
  done
  for m in "${MODEL_LIST[@]}"; do ask $port "$m" >/dev/null || log "WARNING: $server $m failed after the load"; done
  stop "$pid"
done

# --- report
"$FERRY_PY" - "$OUT" "$MODELS" "$SAT_C" "$SAT_D" "$LAT_D" "$PROFILE_BELOW" >"$OUT/report.md" <<'EOF'
import re, sys
from pathlib import Path

out, models, sat_c, sat_d, lat_d = Path(sys.argv[1]), sys.argv[2].split(","), sys.argv[3], sys.argv[4], sys.argv[5]
below = float(sys.argv[6])
low = []
UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}

def parse(path):
    text = path.read_text()
    r = {"rps": float(re.search(r"Requests/sec:\s+([0-9.]+)", text).group(1))}
    for pct in ("50", "99"):
        v, u = re.search(r"^\s+%s%%\s+([0-9.]+)(us|ms|s|m)\b" % pct, text, re.M).groups()
        r["p" + pct] = float(v) * UNIT[u]
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    r["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: (.*)", text)
    r["sock"] = m.group(1) if m else ""
    return r

def ms(v):
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:.0f}"

print(f"# Ferry vs Flask + gunicorn on the example models\n")
print(f"One worker each, pinned to CPU 1; `wrk -t1` pinned to CPU 0; 1-row requests; one run.")
print(f"req/s and p99 at {sat_c} connections ({sat_d} after a 3 s warm-up); c1 p50 at 1 connection ({lat_d}).\n")
print("| model | ferry req/s | flask req/s | ratio | ferry p99 (ms) | flask p99 (ms) | ferry c1 p50 (ms) | flask c1 p50 (ms) | c1 p50 ratio |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
notes = []
for m in models:
    f, k = parse(out / f"raw/ferry-{m}-sat.txt"), parse(out / f"raw/flask-{m}-sat.txt")
    fl, kl = parse(out / f"raw/ferry-{m}-lat.txt"), parse(out / f"raw/flask-{m}-lat.txt")
    print(f"| {m} | {f['rps']:,.0f} | {k['rps']:,.0f} | {f['rps'] / k['rps']:.1f}x | {ms(f['p99'])} | {ms(k['p99'])} "
          f"| {ms(fl['p50'])} | {ms(kl['p50'])} | {kl['p50'] / fl['p50']:.1f}x |")
    if f["rps"] / k["rps"] < below:
        low.append(m)
    for name, r in (("ferry", f), ("flask", k), ("ferry c1", fl), ("flask c1", kl)):
        if r["non2xx"] or r["sock"]:
            notes.append(f"- {m} {name}: non-2xx {r['non2xx']}; socket errors: {r['sock'] or 'none'}")
print()
print("\n".join(notes) if notes else "No non-2xx replies and no socket errors.")
print("\n## Same prediction for the sample, before timing\n\n```")
print((out / "checks.txt").read_text().rstrip())
print("```\n\n## Versions\n\n```")
print((out / "versions.txt").read_text().rstrip())
print("```")
(out / "low.txt").write_text("".join(m + "\n" for m in low))
EOF

# --- py-spy profiles of ferry where the ratio is low
profile_summary() { # raw-collapsed-stacks -> markdown
  "$FERRY_PY" - "$1" <<'EOF'
import collections, re, sys
# frames every sample of the main thread carries (CLI, uvicorn startup, asyncio runner) or thread plumbing
BOILER = re.compile(r"\((typer/|click/|uvicorn/(main|server|_compat)\.py|asyncio/runners\.py|ferry/cli/|ferry\)|threading\.py)")
incl, self_, total = collections.Counter(), collections.Counter(), 0
for line in open(sys.argv[1]):
    stack, _, n = line.rstrip("\n").rpartition(" ")
    n = int(n); total += n
    frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
    for f in set(frames):
        incl[f] += n
    self_[frames[-1]] += n
print(f"{total} samples of the thread holding the GIL (py-spy --gil, 200 Hz); % of samples.\n")
print("| inclusive | function |\n|---:|---|")
for f, n in [(f, n) for f, n in incl.most_common() if not BOILER.search(f)][:22]:
    print(f"| {100 * n / total:.1f}% | `{f}` |")
print("\n| self | function |\n|---:|---|")
for f, n in self_.most_common(12):
    print(f"| {100 * n / total:.1f}% | `{f or '(native)'}` |")
EOF
}
if [[ $PROFILE == 1 && -s $OUT/low.txt ]]; then
  if ! command -v py-spy >/dev/null; then
    log "py-spy not found: no profiles"
  else
    while read -r m; do
      log "profiling ferry on $m (ratio below ${PROFILE_BELOW}x)"
      start ferry $FERRY_PORT; pid=$STARTED
      run_wrk ferry "$m" warm $SAT_C $WARM_D $FERRY_PORT
      run_wrk ferry "$m" profile-load $SAT_C 12s $FERRY_PORT &
      wpid=$!
      sleep 2
      taskset -c "$CLIENT_CPU" py-spy record -p "$pid" --gil -r 200 -d 8 --format raw \
        -o "$OUT/raw/profile-ferry-$m.txt" >"$OUT/logs/py-spy-$m.log" 2>&1 || log "py-spy failed (see $OUT/logs/py-spy-$m.log)"
      wait "$wpid"
      stop "$pid"
      if [[ -s $OUT/raw/profile-ferry-$m.txt ]]; then
        { printf '\n## Profile: ferry on %s at %s connections\n\n' "$m" "$SAT_C"
          profile_summary "$OUT/raw/profile-ferry-$m.txt"; } >>"$OUT/report.md"
      fi
    done <"$OUT/low.txt"
  fi
fi
rm -f "$OUT/low.txt"
cat "$OUT/report.md"
log "raw wrk output, replies and logs: $OUT"
