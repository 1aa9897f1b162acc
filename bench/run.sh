#!/usr/bin/env bash
# Ferry side by side with its peers, through the shared harness (../shared/bench/peers.sh), in one run.
#
#   bench/run.sh [--runs N] [--peers flask-gunicorn,fastapi-uvicorn,...]
#
# It installs Ferry into its own venv (/tmp/peers/ferry) the way the harness installs each peer,
# builds the reference examples there, adds Ferry to the harness (bench/ferry.servers.sh: native JSON
# on the talk's /predict route with 100-row batches on /predict_batch, and the OIP v2 route), runs
# the harness (one server worker pinned to CPU 1, wrk -t1 pinned to CPU 0), and
# prints the harness's report followed by bench/ratios.py's table of ratios.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HARNESS="${FERRY_BENCH_HARNESS:-$ROOT/../shared/bench}"
PEERS=/tmp/peers
RUNS=1
ONLY="flask-gunicorn,fastapi-uvicorn,fastapi-uvicorn-async,mlserver,mlserver-pw0,litserve,asgi-floor"
while [[ $# -gt 0 ]]; do
  case $1 in
    --runs) RUNS=$2; shift 2 ;;
    --peers) ONLY=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[[ -x $HARNESS/peers.sh ]] || { echo "no harness at $HARNESS (set FERRY_BENCH_HARNESS)" >&2; exit 1; }

echo "[bench] installing Ferry into $PEERS/ferry" >&2
mkdir -p "$PEERS"
[[ -x $PEERS/ferry/bin/python ]] || python3 -m venv "$PEERS/ferry"
"$PEERS/ferry/bin/pip" install -q "$ROOT[all]" >"$PEERS/ferry-install.log" 2>&1
# Only the iris bundle is served, as every peer serves only iris (memory is compared too).
rm -rf "$PEERS/ferry-examples" "$PEERS/ferry-repo"
"$PEERS/ferry/bin/ferry" examples build "$PEERS/ferry-examples" >&2
mkdir -p "$PEERS/ferry-repo" && cp -r "$PEERS/ferry-examples/iris" "$PEERS/ferry-repo/"

OUT="$ROOT/bench/results/$(date +%Y-%m-%d-%H%M)"
mkdir -p "$OUT"
export FERRY_BENCH_REPO="$PEERS/ferry-repo"
"$HARNESS/peers.sh" --runs "$RUNS" --only "$ONLY,ferry,ferry-v2" --no-overload --out "$OUT" \
  --extra "$ROOT/bench/ferry.servers.sh" >"$OUT/report.md"
cat "$OUT/report.md"
echo
python3 "$ROOT/bench/ratios.py" "$OUT" | tee "$OUT/ratios.md"
