"""docker-compose for a local cluster: N Ferry replicas behind nginx, both health-checked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ferry.deploy.dockerfile import healthcheck_command
from ferry.deploy.spec import GID, GRPC_PORT, HTTP_PORT, MODELS_DIR, TMP_DIR, UID, DeploySpec

NGINX_IMAGE = "nginx:1.27-alpine"
PUBLISHED_HTTP_PORT = 8080


def render_nginx_conf() -> str:
    """Round-robin over every replica: compose's DNS answers ``ferry`` with all of their addresses."""
    return f"""\
# Written by `ferry compose`.
worker_processes auto;
pid /tmp/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    client_body_temp_path /tmp/client_body;
    proxy_temp_path /tmp/proxy;
    fastcgi_temp_path /tmp/fastcgi;
    uwsgi_temp_path /tmp/uwsgi;
    scgi_temp_path /tmp/scgi;
    client_max_body_size 8m;

    upstream ferry_http {{ server ferry:{HTTP_PORT} max_fails=1 fail_timeout=5s; keepalive 32; }}
    upstream ferry_grpc {{ server ferry:{GRPC_PORT}; }}

    server {{
        listen 8080;
        location = /nginx-health {{ access_log off; return 200 "ok\\n"; }}
        location / {{
            proxy_pass http://ferry_http;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_next_upstream error timeout http_502 http_503;
        }}
    }}
    server {{
        listen {GRPC_PORT};
        http2 on;
        location / {{ grpc_pass grpc://ferry_grpc; }}
    }}
}}
"""


def render_compose(spec: DeploySpec) -> dict[str, Any]:
    """Same image, UID, read-only root, limits and FERRY_* environment as the Kubernetes Deployment."""
    environment = spec.server_env()
    ferry: dict[str, Any] = {
        "image": spec.image,
        "user": f"{UID}:{GID}",
        "read_only": True,
        "tmpfs": [TMP_DIR],
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "environment": environment,
        "expose": [str(HTTP_PORT), str(GRPC_PORT)],
        "stop_grace_period": f"{spec.drain_timeout + 5}s",
        "healthcheck": {
            "test": ["CMD", *healthcheck_command()],
            "interval": "10s",
            "timeout": "3s",
            "retries": 3,
            "start_period": "30s",
        },
        "deploy": {
            "replicas": spec.replicas,
            "resources": {"limits": {"cpus": spec.resources.cpu_limit, "memory": _compose_memory(spec)}},
        },
        "restart": "unless-stopped",
    }
    if spec.model_uri:
        environment["FERRY_MODEL_URI"] = spec.model_uri
        ferry["tmpfs"] = [TMP_DIR, f"{MODELS_DIR}:uid={UID},gid={GID}"]
    nginx: dict[str, Any] = {
        "image": NGINX_IMAGE,
        "ports": [f"{PUBLISHED_HTTP_PORT}:8080", f"{GRPC_PORT}:{GRPC_PORT}"],
        "volumes": ["./nginx.conf:/etc/nginx/nginx.conf:ro"],
        "read_only": True,
        "tmpfs": [TMP_DIR],
        "depends_on": {"ferry": {"condition": "service_healthy"}},
        "healthcheck": {
            "test": ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/nginx-health"],
            "interval": "10s",
            "timeout": "3s",
            "retries": 3,
        },
        "restart": "unless-stopped",
    }
    return {"name": spec.name, "services": {"ferry": ferry, "nginx": nginx}}


def write_compose(spec: DeploySpec, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    compose = out / "docker-compose.yml"
    compose.write_text(yaml.safe_dump(render_compose(spec), sort_keys=False), encoding="utf-8")
    conf = out / "nginx.conf"
    conf.write_text(render_nginx_conf(), encoding="utf-8")
    return [compose, conf]


def _compose_memory(spec: DeploySpec) -> str:
    """Kubernetes ``1Gi`` -> compose ``1g``: the same limit in each tool's spelling."""
    value = spec.resources.memory_limit
    for suffix, short in (("Gi", "g"), ("Mi", "m"), ("Ki", "k")):
        if value.endswith(suffix):
            return value[: -len(suffix)] + short
    return value
