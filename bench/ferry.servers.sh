# Ferry's entries for the shared harness (sourced by peers.sh through --extra).
# FERRY_BENCH_REPO is the example repository that bench/run.sh builds.
add_server name=ferry venv=ferry url=http://127.0.0.1:18050/predict lua=lua/talk.lua \
  batch_url=http://127.0.0.1:18050/predict_batch batch_lua=lua/talk_batch100.lua \
  cmd='exec "$VENV/bin/ferry" serve "$FERRY_BENCH_REPO" --port $PORT --grpc-port 0 --no-access-log --log-level warning' \
  note="ferry serve, 1 worker; the talk's /predict compatibility route (native JSON)"
add_server name=ferry-v2 venv=ferry proto=v2 url=http://127.0.0.1:18051/v2/models/iris/infer lua=lua/v2.lua \
  batch_url=http://127.0.0.1:18051/v2/models/iris/infer batch_lua=lua/v2_batch100.lua \
  cmd='exec "$VENV/bin/ferry" serve "$FERRY_BENCH_REPO" --port $PORT --grpc-port 0 --no-access-log --log-level warning' \
  note="ferry serve, 1 worker; Open Inference v2 REST"
