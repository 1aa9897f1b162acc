-- bench/examples.sh: POST /models/reviews/predict, one Japanese review (LightGBM on hashed char n-grams)
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"text": "最高の映画でした！"}'
