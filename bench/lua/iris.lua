-- bench/examples.sh: POST /models/iris/predict, one row -> {"prediction": "virginica"}
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"length": 5.1, "width": 2.4}'
