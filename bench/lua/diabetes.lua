-- bench/examples.sh: POST /models/diabetes/predict, one row -> {"prediction": 199.6...}
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"bmi": 0.05}'
