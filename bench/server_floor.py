"""The ASGI floor app (JSON in, constant out) used to choose the HTTP server: see results/*/servers.md."""
import orjson
BODY = orjson.dumps({"prediction": "virginica"})
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]
async def app(scope, receive, send):
    if scope["type"] != "http":
        if scope["type"] == "lifespan":
            while True:
                m = await receive()
                if m["type"] == "lifespan.startup": await send({"type": "lifespan.startup.complete"})
                elif m["type"] == "lifespan.shutdown": await send({"type": "lifespan.shutdown.complete"}); return
        return
    body = b""
    while True:
        m = await receive(); body += m.get("body", b"")
        if not m.get("more_body"): break
    orjson.loads(body)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
