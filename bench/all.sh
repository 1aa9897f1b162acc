#!/usr/bin/env bash
# Every Ferry figure that docs/performance.md quotes, in one run, into one results folder.
#
#   bench/all.sh [--quick]
#
# 1. bench/run.sh: Ferry (native and OIP v2 REST) beside its peers through the shared harness (req/s at 64
#    connections, p99, p50 at 1 connection, 100-row rows/s, ready seconds, RSS), with bench/ratios.py's table;
# 2. bench/examples.sh: iris and the LightGBM reviews model against the hand-written Flask + gunicorn app;
# 3. bench/ready.py: milliseconds from exec to /ready 200, iris alone and the four examples;
# 4. bench/pss.py: RSS and PSS of 1 and 4 workers;
# 5. bench/many_models.py: 1,000 models under --max-memory 1GiB (first-call and hit latency, failures).
# --quick shortens every wrk run (8 s saturation, 5 s latency), for a machine that is lent for minutes.
# Output: bench/results/all-<YYYY-MM-DD-HHMM>/ with each step's report and summary.md, the steps in order.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/bench/results/all-$(date +%Y-%m-%d-%H%M)"
EX_ARGS=()
if [[ ${1:-} == --quick ]]; then
  export SAT_D=8s LAT_D=5s BATCH_D=8s WARM_D=2s   # read by the shared harness
  EX_ARGS=(--sat-d 8s --lat-d 5s)
fi
mkdir -p "$OUT"
step() { echo "[all] $(date +%H:%M:%S) $*" >&2; }

step "1/5 the shared harness (bench/run.sh)"
"$ROOT/bench/run.sh" --peers flask-gunicorn,fastapi-uvicorn,fastapi-uvicorn-async,mlserver,litserve,asgi-floor \
  >"$OUT/1-harness.md"
EXAMPLES=/tmp/peers/ferry-examples   # built by bench/run.sh: iris, diabetes, score and reviews

step "2/5 examples against the hand-written Flask app (bench/examples.sh)"
"$ROOT/bench/examples.sh" --models iris,reviews --no-profile "${EX_ARGS[@]}" >"$OUT/2-examples.md"

step "3/5 ready time (bench/ready.py)"
python3 "$ROOT/bench/ready.py" /tmp/peers/ferry-repo "$EXAMPLES" --runs 7 -- --trust-code >"$OUT/3-ready.md"

step "4/5 memory of 1 and 4 workers (bench/pss.py)"
{ python3 "$ROOT/bench/pss.py" /tmp/peers/ferry-repo; python3 "$ROOT/bench/pss.py" "$EXAMPLES" -- --trust-code; } \
  >"$OUT/4-pss.md"

step "5/5 1,000 models under --max-memory 1GiB (bench/many_models.py)"
python3 "$ROOT/bench/many_models.py" >"$OUT/5-many-models.md"

for f in "$OUT"/[1-5]-*.md; do
  echo "## $(basename "$f" .md)"
  echo
  cat "$f"
  echo
done >"$OUT/summary.md"
step "done: $OUT/summary.md"
