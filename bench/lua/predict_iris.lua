-- POST /predict {"length": 5.1, "width": 2.4}: the same request for Ferry's iris route and the FastAPI peer.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"length": 5.1, "width": 2.4}'
